#!/usr/bin/env bash
# Runs the cluster e2e tests on a kind cluster (needs docker, kind and kubectl; not for the
# project's machines, which have no Docker engine: there use e2e/scripts/k8s-e2e.sh).
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
