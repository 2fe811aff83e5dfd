#!/usr/bin/env bash
# Local Kubernetes e2e suite: brings up the local control plane (etcd, kube-apiserver,
# kube-controller-manager), starts qpq-podrunner as the kubelet of one node, runs the pod
# runner's own tests (e2e/podrunner/tests) and then the operator suite (e2e/tests/k8s.rs: the
# Helm-installed operator, QpqClusters of real qpq-node pods, real qpq clients), and tears
# everything down (also on failure). Needs root (the runner publishes pod DNS names in
# /etc/hosts).
#
#   e2e/scripts/k8s-e2e.sh            # build what is missing, run, tear down
#   QPQ_K8S_KEEP=1 e2e/scripts/k8s-e2e.sh   # leave the cluster running afterwards
#   QPQ_K8S_TESTS=monitoring e2e/scripts/k8s-e2e.sh   # only the operator tests matching a filter
#
# Cost: cold, building kube-apiserver/kube-controller-manager/etcd took ~34 min on the shared 2-core
# machine (cached in ${QPQ_CACHE:-~/.cache/qpq}/k8s); warm, `up` takes 4-7 s, the tests ~10 s, all ~30-40 s.
set -euo pipefail
cd "$(dirname "$0")/../.."

CP=e2e/scripts/control-plane.sh
STATE="${QPQ_K8S_DIR:-/tmp/qpq-k8s}"
export QPQ_K8S_DIR="$STATE"
MANIFEST=e2e/podrunner/Cargo.toml # a workspace of its own (see its Cargo.toml)
TARGET="${CARGO_TARGET_DIR:-e2e/podrunner/target}"
t0=$SECONDS

# One suite per state directory at a time: a second run would share, then tear down, the first's
# cluster.
exec 9>"$STATE.lock"
flock -w 900 9 || { echo "k8s-e2e: another run holds $STATE.lock" >&2; exit 1; }

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "k8s-e2e: failed; last runner log lines:" >&2
    tail -n 40 "$STATE/logs/qpq-podrunner.log" >&2 2>/dev/null || true
  fi
  if [[ "${QPQ_K8S_KEEP:-0}" == 1 ]]; then
    echo "k8s-e2e: leaving the cluster up: eval \"\$($CP env)\"; stop with $CP down" >&2
  else
    "$CP" down || true
  fi
  exit $rc
}
trap cleanup EXIT

echo "== k8s-e2e: control plane"
"$CP" up
t_up=$SECONDS

echo "== k8s-e2e: build qpq-podrunner and qpq-testserver"
cargo build --manifest-path "$MANIFEST" --bins --tests
echo "== k8s-e2e: build qpq-node, qpq-operator, qpq and the operator suite"
cargo build -p qpq-node -p qpq-operator -p qpq-client --bins
cargo test -p qpq-e2e --test k8s --no-run
MAIN_TARGET="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
# The "next release" of the rollout tests: the same source with one more replicated-command
# version (feature test-command-v2, never in a release), in a target directory of its own so
# that it does not replace the production binary.
# The same build carries the test-only fault switches (feature test-faults), off unless an
# image below sets their environment variable.
echo "== k8s-e2e: build qpq-node with test-command-v2 (the rollout tests' next version)"
V2_TARGET="$MAIN_TARGET/command-v2"
CARGO_TARGET_DIR="$V2_TARGET" cargo build -p qpq-node --features test-command-v2,test-faults \
  --bin qpq-node
# A version that is Ready but harmful: the v2 build whose AppendEntries answers come after
# the leader gave up on them (600 ms > the 250 ms heartbeat interval, < the 1 s election
# timeout), so its replication lag, seen from the leader, grows with every write.
mkdir -p "$STATE/images"
cat > "$STATE/images/qpq-node-slow-acks" <<SH
#!/bin/sh
QPQ_TEST_FAULT_APPEND_RESPONSE_DELAY_MS=600 exec "$V2_TARGET/debug/qpq-node" "\$@"
SH
chmod +x "$STATE/images/qpq-node-slow-acks"
# A version that is Ready and replicates well but whose metrics endpoint answers 503: the
# rollout's analysis cannot read its write signals and must pause, not judge.
cat > "$STATE/images/qpq-node-no-metrics" <<SH
#!/bin/sh
QPQ_TEST_FAULT_METRICS_UNAVAILABLE=1 exec "$V2_TARGET/debug/qpq-node" "\$@"
SH
chmod +x "$STATE/images/qpq-node-no-metrics"
TOOLS="$(e2e/scripts/tools.sh)"
# The images the chart and the examples name, played by the binaries just built.
cat > "$STATE/images.yaml" <<YAML
# image reference -> local binary (the pod runner's "registry")
qpq/testserver:dev: $(cd "$TARGET" && pwd)/debug/qpq-testserver
ghcr.io/quicproquo/qpq-node: $MAIN_TARGET/debug/qpq-node
# Versions the rollout tests roll to (e2e/tests/k8s/rollout.rs): a good one, one that exits at
# start, one that never becomes Ready, one that is Ready but lets replication fall behind, one
# whose metrics cannot be read. The fault "images" are test scripts and a test-only build, not
# switches of the production binary.
ghcr.io/quicproquo/qpq-node:0.2.0: $V2_TARGET/debug/qpq-node
ghcr.io/quicproquo/qpq-node:0.3.0-crash: $(pwd)/e2e/images/qpq-node-crash
ghcr.io/quicproquo/qpq-node:0.3.0-unready: $(pwd)/e2e/images/qpq-node-unready
ghcr.io/quicproquo/qpq-node:0.3.0-slow-acks: $STATE/images/qpq-node-slow-acks
ghcr.io/quicproquo/qpq-node:0.3.0-no-metrics: $STATE/images/qpq-node-no-metrics
ghcr.io/quicproquo/qpq-operator: $MAIN_TARGET/debug/qpq-operator
YAML

echo "== k8s-e2e: pod runner"
mkdir -p "$STATE/pids" "$STATE/logs"
KUBECONFIG="$STATE/kubeconfig" RUST_LOG="${RUST_LOG:-info,kube=warn}" \
  setsid "$TARGET/debug/qpq-podrunner" --image-map "$STATE/images.yaml" \
  --state-dir "$STATE/runner" \
  --kubelet-listen 127.0.0.1:10250 --kubelet-cert "$STATE/pki/kubelet.crt" \
  --kubelet-key "$STATE/pki/kubelet.key" --kubelet-client-ca "$STATE/pki/ca.crt" \
  --network-policy enforce \
  >"$STATE/logs/qpq-podrunner.log" 2>&1 </dev/null &
echo $! > "$STATE/pids/qpq-podrunner.pid"
for _ in $(seq 1 60); do
  grep -q "pod runner started" "$STATE/logs/qpq-podrunner.log" && break
  kill -0 "$(cat "$STATE/pids/qpq-podrunner.pid")" || { echo "k8s-e2e: runner died" >&2; exit 1; }
  sleep 0.5
done

echo "== k8s-e2e: pod runner tests"
t_tests=$SECONDS
QPQ_E2E_KUBECONFIG="$STATE/kubeconfig" QPQ_E2E_TESTSERVER_IMAGE=qpq/testserver:dev \
  cargo test --manifest-path "$MANIFEST" --test cluster -- --nocapture
t_runner=$((SECONDS - t_tests))

echo "== k8s-e2e: operator suite"
t_tests=$SECONDS
QPQ_E2E_KUBECONFIG="$STATE/kubeconfig" QPQ_E2E_RUNNER_STATE="$STATE/runner" \
  QPQ_E2E_QPQ="$MAIN_TARGET/debug/qpq" QPQ_E2E_HELM="$TOOLS/helm" QPQ_E2E_KUBECTL="$TOOLS/kubectl" \
  cargo test -p qpq-e2e --test k8s -- --ignored --test-threads=1 --nocapture ${QPQ_K8S_TESTS:-}
echo "k8s-e2e: control plane up ${t_up}s (from start), pod runner tests ${t_runner}s," \
  "operator suite $((SECONDS - t_tests))s, total $((SECONDS - t0))s"
