#!/usr/bin/env bash
# Runs the pod runner's cluster tests and then the operator suite on a kind cluster (needs
# docker, kind, kubectl, helm and root for a route to the pod network; not for the project's
# machines, which have no Docker engine: there use e2e/scripts/k8s-e2e.sh). Unexercised here.
#   e2e/kind/run.sh            # create cluster qpq-e2e, build and load the image, test, delete
#   KEEP=1 e2e/kind/run.sh     # keep the cluster
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER="${KIND_CLUSTER:-qpq-e2e}"
IMAGE="${QPQ_E2E_TESTSERVER_IMAGE:-qpq/testserver:dev}"
KCFG="$(mktemp)"

created=0
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 120s
  created=1
fi
cleanup() {
  rm -f "$KCFG"
  if [[ $created == 1 && "${KEEP:-0}" != 1 ]]; then kind delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT
kind get kubeconfig --name "$CLUSTER" > "$KCFG"

docker build -f e2e/kind/Dockerfile.testserver -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

QPQ_E2E_KUBECONFIG="$KCFG" QPQ_E2E_TESTSERVER_IMAGE="$IMAGE" \
  cargo test --manifest-path e2e/podrunner/Cargo.toml --test cluster -- --nocapture

# The operator suite: node and operator images, pod IPs routed to the kind node (clients speak
# QUIC to each pod; Linux, needs root for the route).
NODE_IMAGE="${QPQ_E2E_NODE_IMAGE:-qpq/node:dev}"
OPERATOR_IMAGE="${QPQ_E2E_OPERATOR_IMAGE:-qpq/operator:dev}"
docker build -f e2e/kind/Dockerfile.qpq --target node -t "$NODE_IMAGE" .
docker build -f e2e/kind/Dockerfile.qpq --target operator -t "$OPERATOR_IMAGE" .
kind load docker-image "$NODE_IMAGE" "$OPERATOR_IMAGE" --name "$CLUSTER"
node_ip="$(docker inspect -f '{{.NetworkSettings.Networks.kind.IPAddress}}' "$CLUSTER-control-plane")"
pod_cidr="$(kubectl --kubeconfig "$KCFG" get node "$CLUSTER-control-plane" -o jsonpath='{.spec.podCIDR}')"
ip route replace "$pod_cidr" via "$node_ip"
cargo build -p qpq-client --bin qpq
QPQ_E2E_KUBECONFIG="$KCFG" QPQ_E2E_NODE_IMAGE="$NODE_IMAGE" QPQ_E2E_OPERATOR_IMAGE="$OPERATOR_IMAGE" \
  cargo test -p qpq-e2e --test k8s -- --ignored --test-threads=1 --nocapture
