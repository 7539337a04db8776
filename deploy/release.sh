#!/usr/bin/env bash
# Builds a release into one folder: static wsbridge binaries for linux/amd64
# and linux/arm64, the four SCF function zips, and SHA256SUMS over all of them.
#
#   deploy/release.sh [OUT_DIR]          (default: dist/release)
#   VERSION=v1.2.0 deploy/release.sh     (default: git describe, else "dev")
#
# `wsbridge version` of the built binaries prints VERSION, the VCS revision
# and the Go version.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/release}
if [ -z "${VERSION:-}" ]; then
  VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/wsbridge-linux-* "$out"/*.zip "$out/SHA256SUMS"
for arch in amd64 arm64; do
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -buildvcs=auto -trimpath \
    -ldflags="-s -w -X main.version=$VERSION" -o "$out/wsbridge-linux-$arch" .
  echo "$out/wsbridge-linux-$arch"
done
deploy/build-functions.sh "$out"
(cd "$out" && sha256sum wsbridge-linux-amd64 wsbridge-linux-arm64 register.zip transfer.zip cleanup.zip websocket.zip > SHA256SUMS)
echo "$out/SHA256SUMS ($VERSION)"
