#!/usr/bin/env bash
# Local Kubernetes control plane without Docker: etcd + kube-apiserver + kube-controller-manager,
# built from their Go modules with the machine's Go toolchain and run as plain processes on
# loopback. See docs/local-kubernetes.md.
#
#   control-plane.sh build   build (or reuse) the binaries, cached outside the repo by version
#   control-plane.sh up      build if needed, start everything, write a kubeconfig, wait for /readyz
#   control-plane.sh down    stop everything (SIGTERM, then SIGKILL after a bound), keep nothing
#   control-plane.sh env     print `export KUBECONFIG=...` lines for eval
#   control-plane.sh status  show which processes are running
#
# Environment:
#   QPQ_CACHE        cache root (default ~/.cache/qpq); binaries land in $QPQ_CACHE/k8s/<version>/bin
#   QPQ_K8S_DIR      runtime state: certificates, etcd data, logs, kubeconfig (default /tmp/qpq-k8s)
#   QPQ_K8S_PORT     API server port on 127.0.0.1 (default 16443)
#   QPQ_ETCD_PORT    etcd client port on 127.0.0.1 (default 12379; peer port is +1)
#   QPQ_GO_JOBS      parallel Go compile jobs (default 1: the machines are shared); the build runs niced
set -euo pipefail

K8S_VERSION="v1.35.4"
STAGING_VERSION="v0.35.4"
# etcd comes from the same module graph as the API server (k8s.io/kubernetes v1.35.4 requires
# go.etcd.io/etcd/server/v3 v3.6.5), so one `go build` produces all three binaries.
ETCD_VERSION="v3.6.5"
STAGING_MODULES=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base component-helpers
  controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
  endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
  kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission sample-apiserver
  sample-cli-plugin sample-controller)

# Bump when the build itself changes (flags), so cached binaries are rebuilt.
BUILD_REV=2
CACHE="${QPQ_CACHE:-$HOME/.cache/qpq}"
BUILD_DIR="$CACHE/k8s/$K8S_VERSION-r$BUILD_REV"
BIN="$BUILD_DIR/bin"
STATE="${QPQ_K8S_DIR:-/tmp/qpq-k8s}"
API_PORT="${QPQ_K8S_PORT:-16443}"
ETCD_PORT="${QPQ_ETCD_PORT:-12379}"
ETCD_PEER_PORT=$((ETCD_PORT + 1))
CM_PORT="${QPQ_KCM_PORT:-16257}"
# The service CIDR is only an internal allocation range of the API server: nothing routes it.
SERVICE_CIDR="10.96.0.0/16"

log() { echo "control-plane: $*" >&2; }
die() { log "error: $*"; exit 1; }

build() {
  if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/etcd" ]]; then
    return 0
  fi
  command -v go >/dev/null || die "go toolchain not found"
  local src="$BUILD_DIR/src"
  mkdir -p "$src/cmd/etcd" "$BIN"
  # Two worktrees may build at once: one builds, the other waits and reuses.
  exec 8>"$BUILD_DIR/.build.lock"
  flock 8
  if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/etcd" ]]; then
    return 0
  fi
  local start=$SECONDS
  log "building kube-apiserver, kube-controller-manager $K8S_VERSION and etcd $ETCD_VERSION in $src (cold: tens of minutes)"
  {
    echo "module qpq.local/k8s-control-plane"
    echo
    echo "go 1.25.0"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $K8S_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    for m in "${STAGING_MODULES[@]}"; do echo "	k8s.io/$m => k8s.io/$m $STAGING_VERSION"; done
    echo ")"
  } > "$src/go.mod"
  cat > "$src/cmd/etcd/main.go" <<'GO'
// Command etcd is etcd's server main, built from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (
    cd "$src"
    export GOFLAGS="-mod=mod -p=${QPQ_GO_JOBS:-1} -trimpath"
    export CGO_ENABLED=0
    # The version the API server reports (Helm checks charts' kubeVersion against it); without
    # these it says v0.0.0-master.
    local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    local v="k8s.io/component-base/version"
    local ld="-X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
    ld+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
    nice -n 19 go build -ldflags "$ld" -o "$BIN.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      ./cmd/etcd
  )
  mv "$BIN.tmp"/* "$BIN/" && rmdir "$BIN.tmp"
  flock -u 8
  log "built in $((SECONDS - start))s: $(ls "$BIN" | tr '\n' ' ')"
}

pidfile() { echo "$STATE/pids/$1.pid"; }

running() {
  local f; f=$(pidfile "$1")
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

start() { # name, then command
  local name=$1; shift
  mkdir -p "$STATE/pids" "$STATE/logs"
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$name")"
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.5 s, fails after SECONDS.
wait_for() {
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${limit}s waiting for $what; last log lines:"
      tail -n 20 "$STATE/logs/"*.log >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

certs() {
  local d="$STATE/pki"
  [[ -f "$d/apiserver.crt" ]] || api_certs
  [[ -f "$d/kubelet.crt" ]] || kubelet_certs
}

# The pod runner's kubelet endpoint (container logs): its serving certificate, and the client
# certificate the API server presents to it (the only caller the endpoint accepts).
kubelet_certs() {
  local d="$STATE/pki"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=qpq-local" \
    -keyout "$d/kubelet.key" -out "$d/kubelet.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:qpq-local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > "$d/kubelet.ext"
  openssl x509 -req -in "$d/kubelet.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/kubelet.ext" -out "$d/kubelet.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$d/kubelet-client.key" -out "$d/kubelet-client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > "$d/kubelet-client.ext"
  openssl x509 -req -in "$d/kubelet-client.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/kubelet-client.ext" -out "$d/kubelet-client.crt" 2>/dev/null
  chmod 600 "$d/kubelet.key" "$d/kubelet-client.key"
}

api_certs() {
  local d="$STATE/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=qpq-local-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > "$d/apiserver.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$d/admin.token"
  printf '%s,admin,admin,"system:masters"\n' "$(cat "$d/admin.token")" > "$d/tokens.csv"
  chmod 600 "$d"/*.key "$d/admin.token" "$d/tokens.csv"
}

kubeconfig() {
  local ca; ca=$(base64 -w0 < "$STATE/pki/ca.crt")
  cat > "$STATE/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: qpq-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $(cat "$STATE/pki/admin.token")
contexts:
- name: qpq-local
  context:
    cluster: qpq-local
    user: admin
    namespace: default
current-context: qpq-local
KC
  chmod 600 "$STATE/kubeconfig"
}

api_ready() {
  curl -sf --max-time 2 --cacert "$STATE/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$STATE/pki/admin.token")" "https://127.0.0.1:$API_PORT/readyz"
}

default_sa() {
  curl -sf --max-time 2 --cacert "$STATE/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$STATE/pki/admin.token")" \
    "https://127.0.0.1:$API_PORT/api/v1/namespaces/default/serviceaccounts/default"
}

up() {
  local t0=$SECONDS
  build
  command -v openssl >/dev/null || die "openssl not found"
  if running kube-apiserver; then
    log "already running (state in $STATE)"
    return 0
  fi
  mkdir -p "$STATE"
  certs
  local d="$STATE/pki"
  start etcd "$BIN/etcd" --name qpq-local --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "qpq-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for etcd 30 curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" \
    --client-ca-file "$d/ca.crt" --token-auth-file "$d/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode RBAC --allow-privileged=true --profiling=false \
    --kubelet-client-certificate "$d/kubelet-client.crt" --kubelet-client-key "$d/kubelet-client.key" \
    --kubelet-certificate-authority "$d/ca.crt" --kubelet-preferred-address-types InternalIP \
    --endpoint-reconciler-type none
  wait_for kube-apiserver 120 api_ready
  kubeconfig
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig" \
    --authentication-kubeconfig "$STATE/kubeconfig" --authorization-kubeconfig "$STATE/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$CM_PORT" \
    --service-account-private-key-file "$d/sa.key" --root-ca-file "$d/ca.crt" \
    --cluster-signing-cert-file "$d/ca.crt" --cluster-signing-key-file "$d/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --leader-elect=false --profiling=false
  wait_for "kube-controller-manager (default service account)" 90 default_sa
  log "up in $((SECONDS - t0))s; KUBECONFIG=$STATE/kubeconfig (logs in $STATE/logs)"
}

down() {
  local name f pid
  for name in qpq-podrunner kube-controller-manager kube-apiserver etcd; do
    f=$(pidfile "$name")
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  # Container processes of a runner that did not stop them (it was killed): each is a process
  # group leader whose working directory is inside the runner's state.
  for f in "$STATE"/runner/pods/*/pids/*; do
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    if [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$STATE"/* ]]; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  # NetworkPolicy rules and pod cgroups a killed runner left (--network-policy enforce).
  PATH="$PATH:/usr/sbin:/sbin" nft delete table inet qpq_podrunner 2>/dev/null || true
  for f in /sys/fs/cgroup/unified/qpq-podrunner/* /sys/fs/cgroup/qpq-podrunner/*; do
    if [[ -d "$f" ]]; then rmdir "$f" 2>/dev/null || true; fi
  done
  if [[ "${QPQ_K8S_KEEP:-0}" != 1 ]]; then
    rm -rf "$STATE"
  fi
  log "down"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  env) echo "export KUBECONFIG=$STATE/kubeconfig" ;;
  status)
    for n in etcd kube-apiserver kube-controller-manager qpq-podrunner; do
      if running "$n"; then echo "$n: running (pid $(cat "$(pidfile "$n")"))"; else echo "$n: stopped"; fi
    done ;;
  *) die "usage: $0 build|up|down|env|status" ;;
esac
