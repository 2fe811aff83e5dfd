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

CACHE="${QPQ_CACHE:-$HOME/.cache/qpq}"
BUILD_DIR="$CACHE/k8s/$K8S_VERSION"
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
    nice -n 19 go build -o "$BIN.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      ./cmd/etcd
  )
  mv "$BIN.tmp"/* "$BIN/" && rmdir "$BIN.tmp"
  log "built in $((SECONDS - start))s: $(ls "$BIN" | tr '\n' ' ')"
}

case "${1:-}" in
  build) build ;;
  *) die "usage: $0 build|up|down|env|status" ;;
esac
