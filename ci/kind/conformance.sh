#!/usr/bin/env bash
# ci/kind/conformance.sh — the kind leg of the conformance matrix, as the workflow runs it: the harness's
# kind backend does everything (it is the one implementation; this script only checks the tools and hands
# over the matrix values):
#
#   imds-conformance run --backend kind --kind-cluster NAME --kind-config ci/kind/<config>.yaml
#                        [--kind-node-image IMAGE] --kind-images DIR --scenario scenarios/<scenario>.yaml
#
# which creates (or reuses) the cluster, `kind load image-archive`s the three images of ci/build-images.sh,
# installs the CRDs, one mock-imds per node routed from the node (SPEC §4), the test pods running the probe,
# the interceptor DaemonSet, runs the catalogue, writes JUnit + Markdown, and deletes a cluster it created
# unless --keep-cluster (also on failure and Ctrl-C). `--dry-run` prints the kind/kubectl/docker commands
# instead of running them.
#
# usage: ci/kind/conformance.sh --config two-workers --image kindest/node:v1.33.1 --scenario nmi-default
#                               [--cluster NAME] [--images DIR] [--out DIR] [--keep-cluster] [--dry-run]
#
# Needs docker, kind and kubectl (not for --dry-run). Not exercised on the development machines (kind needs a
# node image from a registry); the command sequences are pinned by conformance/tests/kind_backend.rs.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
log() { printf 'ci/kind/conformance.sh: %s\n' "$*" >&2; }

config="two-workers" image="" scenario="nmi-default" cluster="imds-conformance" images="target/images"
out="out" keep="" dry=""
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift ;;
    --image) image="$2"; shift ;;
    --scenario) scenario="$2"; shift ;;
    --cluster) cluster="$2"; shift ;;
    --images) images="$2"; shift ;;
    --out) out="$2"; shift ;;
    --keep-cluster) keep=1 ;;
    --dry-run) dry=1 ;;
    *) log "unknown argument $1"; exit 2 ;;
  esac
  shift
done
harness="${IMDS_CONFORMANCE_BIN:-target/debug/imds-conformance}"
[ -x "$harness" ] || { log "$harness not found (cargo build -p imds-conformance)"; exit 2; }
[ -f "ci/kind/$config.yaml" ] || { log "no kind config ci/kind/$config.yaml"; exit 2; }
[ -f "scenarios/$scenario.yaml" ] || { log "no scenario scenarios/$scenario.yaml"; exit 2; }

args=(run --backend kind --kind-cluster "$cluster" --kind-config "ci/kind/$config.yaml"
      --kind-images "$images" --scenario "scenarios/$scenario.yaml")
[ -n "$image" ] && args+=(--kind-node-image "$image")
[ -n "$keep" ] && args+=(--keep-cluster)
if [ -n "$dry" ]; then
  exec "$harness" "${args[@]}" --kind-dry-run
fi
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is required"; exit 2; }
done
mkdir -p "$out"
report="$out/kind-$config-$scenario"
rc=0
"$harness" "${args[@]}" --report "junit=$report.xml" --report "json=$report.json" --report "md=$report.md" || rc=$?
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "$report.md" ]; then
  cat "$report.md" >>"$GITHUB_STEP_SUMMARY"
fi
exit "$rc"
