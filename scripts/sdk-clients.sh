#!/usr/bin/env bash
# Installs the real Azure SDK clients the conformance harness's SDK area runs inside pods, into DIR
# (default target/sdk-clients), from conformance/sdk/:
#   DIR/python/  a virtualenv with the pinned azure-identity (requirements.txt) and sdk_client.py
#   DIR/node/    the pinned @azure/identity (npm ci of package-lock.json) and sdk_client.js
# The Rust client (azure_identity) is the workspace binary imds-sdk-client, built here too; the harness finds
# it next to itself. Use the result with `imds-conformance run --sdk-clients DIR`.
# A missing interpreter or package index is a loud SKIP line for that SDK (the harness then SKIPs its
# cases, naming what is missing) and does not fail the script; exit 0 unless DIR cannot be made.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/target/sdk-clients}"
src="$root/conformance/sdk"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
log() { printf 'sdk-clients: %s\n' "$*" >&2; }

# Python and Node install side by side (both mostly wait on their package index).
install_python() {
  python="${PYTHON:-python3}"
  if ! command -v "$python" >/dev/null 2>&1; then
    log "SKIP: $python not found; the Python azure-identity client is not installed"
  elif ! { [ -x "$dir/python/bin/python" ] || "$python" -m venv "$dir/python"; }; then
    log "SKIP: \`$python -m venv\` failed; the Python azure-identity client is not installed"
    rm -rf "$dir/python"
  elif ! "$dir/python/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$src/python/requirements.txt"; then
    log "SKIP: pip could not install the pinned azure-identity (no package index?)"
    rm -rf "$dir/python"
  else
    cp "$src/python/sdk_client.py" "$dir/python/"
    log "Python: $("$dir/python/bin/python" --version 2>&1), azure-identity $("$dir/python/bin/python" -c 'from importlib.metadata import version; print(version("azure-identity"))')"
  fi
}

install_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "SKIP: node or npm not found; the Node @azure/identity client is not installed"
  else
    mkdir -p "$dir/node"
    cp "$src/node/package.json" "$src/node/package-lock.json" "$src/node/sdk_client.js" "$dir/node/"
    if (cd "$dir/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
      log "Node: $(node --version), @azure/identity $(node -p 'require(process.argv[1]).version' "$dir/node/node_modules/@azure/identity/package.json")"
    else
      log "SKIP: npm could not install the pinned @azure/identity (no registry?)"
      rm -rf "$dir/node"
    fi
  fi
}

install_python &
python_job=$!
install_node &
node_job=$!
wait "$python_job" "$node_job"

if [ "${SDK_CLIENTS_SKIP_RUST_BUILD:-}" != 1 ]; then
  (cd "$root" && cargo build -q -p imds-sdk-client) || log "SKIP: cargo could not build imds-sdk-client (Rust azure_identity)"
fi
echo "$dir"
