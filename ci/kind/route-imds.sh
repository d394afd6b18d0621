#!/usr/bin/env bash
# ci/kind/route-imds.sh CLUSTER — on every node of kind cluster CLUSTER, route 169.254.169.254/32 to the
# mock-imds pod running on that node (ci/manifests/kind/mock-imds.yaml), so that IMDS traffic is forwarded by
# the node as on Azure (SPEC §4): pod traffic crosses the node's PREROUTING (the interceptor's DNAT) and
# FORWARD chains; the node's own traffic is locally generated (OUTPUT).
#
# kind nodes are Docker containers with iproute2, so the route is set with `docker exec` — the host-network
# helper of issue 5 without a privileged pod. Pod routes on kind (kindnet/ptp) are host-scoped /32 routes
# over a veth, hence `via <pod IP> dev <veth> onlink`. Idempotent (`ip route replace`). Every call is bounded.
#
# Not exercised on the development machines (no kind node image can be fetched there); runs in the kind
# workflow (.github/workflows/kind.yml).
set -euo pipefail
cluster="${1:?usage: ci/kind/route-imds.sh CLUSTER}"
log() { printf 'ci/kind/route-imds.sh: %s\n' "$*" >&2; }

ctx="kind-$cluster"
for node in $(timeout 30 kind get nodes --name "$cluster"); do
  ip="$(timeout 30 kubectl --context "$ctx" -n imds-conformance get pods \
    -l app.kubernetes.io/name=mock-imds --field-selector "spec.nodeName=$node" \
    -o jsonpath='{.items[0].status.podIP}')"
  [ -n "$ip" ] || { log "no mock-imds pod IP on node $node"; exit 1; }
  dev="$(timeout 30 docker exec "$node" ip -o route get "$ip" | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
  [ -n "$dev" ] || { log "node $node has no route to mock pod $ip"; exit 1; }
  timeout 30 docker exec "$node" ip route replace 169.254.169.254/32 via "$ip" dev "$dev" onlink
  log "$node: 169.254.169.254 -> $ip ($dev)"
done
