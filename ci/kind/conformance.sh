#!/usr/bin/env bash
# ci/kind/conformance.sh — the kind leg of the conformance matrix, as the workflow runs it:
#
#   1. create (or reuse) a kind cluster from ci/kind/<config>.yaml with the requested node image;
#   2. `kind load image-archive` the images ci/build-images.sh saved (nothing is pulled for our images);
#   3. install the aadpodidentity.k8s.io CRDs, one mock-imds per node (ci/manifests/kind/mock-imds.yaml) and
#      route 169.254.169.254 to it on every node (ci/kind/route-imds.sh);
#   4. deploy imds-proxy as NMI would be deployed (ci/manifests/imds-proxy.yaml) and wait for it;
#   5. smoke-check the deployment from outside: the aad-metadata chain exists on every node, the node's own
#      IMDS request reaches its mock (OUTPUT is not intercepted), a pod-network request is answered by the
#      interceptor and never reaches the mock;
#   6. run the harness's catalogue with `--backend kind` when the harness has that backend; otherwise say so
#      in the step summary (the smoke check above is then all that ran);
#   7. delete the cluster unless --keep-cluster (also on failure and Ctrl-C).
#
# usage: ci/kind/conformance.sh --config two-workers --image kindest/node:v1.33.1 --scenario nmi-default
#                               [--cluster NAME] [--images DIR] [--out DIR] [--keep-cluster]
#
# Needs docker, kind and kubectl. Not exercised on the development machines (no kind node image can be
# fetched there); the manifests it applies are validated by ci/check-manifests.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
log() { printf 'ci/kind/conformance.sh: %s\n' "$*" >&2; }

config="two-workers" image="" scenario="nmi-default" cluster="imds-conformance" images="target/images"
out="out" keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift ;;
    --image) image="$2"; shift ;;
    --scenario) scenario="$2"; shift ;;
    --cluster) cluster="$2"; shift ;;
    --images) images="$2"; shift ;;
    --out) out="$2"; shift ;;
    --keep-cluster) keep=1 ;;
    *) log "unknown argument $1"; exit 2 ;;
  esac
  shift
done
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is required"; exit 2; }
done
mkdir -p "$out"
ctx="kind-$cluster"
k() { timeout 120 kubectl --context "$ctx" "$@"; }
summary() { if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then printf '%s\n' "$*" >>"$GITHUB_STEP_SUMMARY"; fi; printf '%s\n' "$*" >&2; }

created=""
cleanup() {
  if [ -n "$created" ] && [ -z "$keep" ]; then
    log "deleting cluster $cluster"
    timeout 300 kind delete cluster --name "$cluster" || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. cluster
if timeout 30 kind get clusters | grep -qx "$cluster"; then
  log "reusing cluster $cluster"
else
  args=(create cluster --name "$cluster" --config "ci/kind/$config.yaml" --wait 180s)
  [ -n "$image" ] && args+=(--image "$image")
  log "kind ${args[*]}"
  created=1
  timeout 600 kind "${args[@]}"
fi
k version >&2

# 2. images
for tarball in "$images"/mock-imds-*.tar "$images"/imds-proxy-*.tar; do
  [ -f "$tarball" ] || { log "missing image archive $tarball (run ci/build-images.sh)"; exit 2; }
  timeout 300 kind load image-archive "$tarball" --name "$cluster"
done

# 3. CRDs, mock per node, routes
k apply -f ci/manifests/crds/
k wait --for condition=established --timeout 60s crd --all
k apply -f ci/manifests/kind/mock-imds.yaml
k -n imds-conformance rollout status daemonset/mock-imds --timeout 120s
ci/kind/route-imds.sh "$cluster"

# 4. the interceptor
k apply -f ci/manifests/imds-proxy.yaml
k -n imds-proxy rollout status daemonset/imds-proxy --timeout 180s

# 5. smoke checks from outside the interceptor
fail=0
for node in $(timeout 30 kind get nodes --name "$cluster"); do
  if timeout 30 docker exec "$node" iptables -t nat -S aad-metadata | grep -q -- "-j DNAT"; then
    log "$node: aad-metadata chain present"
  else
    summary "- ❌ $node: no aad-metadata DNAT rule"; fail=1
  fi
  code="$(timeout 30 docker exec "$node" curl -s -o /dev/null -w '%{http_code}' -H Metadata:true \
    'http://169.254.169.254/metadata/instance?api-version=2021-02-01' || true)"
  if [ "$code" = 200 ]; then log "$node: node traffic reaches its mock (200)"; else
    summary "- ❌ $node: node request to IMDS gave $code (expected the mock's 200)"; fail=1; fi
done
# A pod-network caller: the CoreDNS pod's network namespace, entered from its node (kind nodes have nsenter
# and crictl), so no test image has to be pulled.
dns_pod="$(k -n kube-system get pods -l k8s-app=kube-dns -o jsonpath='{.items[0].metadata.name}')"
dns_node="$(k -n kube-system get pod "$dns_pod" -o jsonpath='{.spec.nodeName}')"
pid="$(timeout 30 docker exec "$dns_node" sh -c \
  "crictl inspect --output go-template --template '{{.info.pid}}' \$(crictl ps -q --name coredns | head -n1)")"
reqid="kind-smoke-$$-$RANDOM"
body="$(timeout 30 docker exec "$dns_node" nsenter -t "$pid" -n curl -s -i -H Metadata:true \
  -H "x-ms-client-request-id: $reqid" \
  'http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F' || true)"
mock_ip="$(k -n imds-conformance get pods -l app.kubernetes.io/name=mock-imds --field-selector "spec.nodeName=$dns_node" -o jsonpath='{.items[0].status.podIP}')"
journal="$(timeout 30 docker exec "$dns_node" curl -s "http://$mock_ip/_mock/journal" || true)"
if printf '%s' "$body" | grep -qi '^content-type: text/plain' && ! printf '%s' "$journal" | grep -q "$reqid"; then
  log "pod traffic ($dns_pod) was answered by the interceptor and did not reach the mock"
else
  summary "- ❌ pod traffic from $dns_pod was not intercepted (response: $(printf '%s' "$body" | head -n1))"; fail=1
fi
[ "$fail" = 0 ] && summary "- ✅ kind $config ${image:-default image}: deployment smoke check passed"

# 6. the catalogue
harness="target/debug/imds-conformance"
if [ -x "$harness" ] && "$harness" run --help 2>/dev/null | grep -q 'kind'; then
  "$harness" run --backend kind --kind-cluster "$cluster" --keep-cluster \
    --scenario "scenarios/$scenario.yaml" \
    --report "junit=$out/kind-$config-$scenario.xml" --report "md=$out/kind-$config-$scenario.md" || fail=1
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "$out/kind-$config-$scenario.md" ]; then
    cat "$out/kind-$config-$scenario.md" >>"$GITHUB_STEP_SUMMARY"
  fi
else
  summary "- ⚠️ the harness has no kind backend yet: scenario $scenario was not run on kind (only the smoke check above)"
fi
exit "$fail"
