#!/usr/bin/env bash
# ci/check-manifests.sh [--update] — validate every YAML file under ci/ and .github/workflows/ and compare
# their canonical summary with ci/manifests.snapshot (see ci/check-manifests.py for the checks).
#
# Why a script and not a Rust test: the files belong to no crate, and a crate just for them would be heavier
# than the check. PyYAML parses them (Debian's python3-yaml, installed here when missing and we are root).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

py=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
    py="$candidate"
    break
  fi
done
if [ -z "$py" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ci/check-manifests.sh: installing python3-yaml" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null; }
    py=/usr/bin/python3
  else
    echo "ci/check-manifests.sh: needs python3 with PyYAML (apt-get install python3-yaml)" >&2
    exit 2
  fi
fi
exec "$py" "$here/check-manifests.py" "$@"
