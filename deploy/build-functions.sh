#!/usr/bin/env bash
# Builds the four SCF functions for Tencent Cloud's Go runtime and zips each
# one as SCF expects: a linux/amd64 executable named "main" at the zip's root.
#
#   deploy/build-functions.sh [OUT_DIR]     (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
for fn in register transfer cleanup websocket; do
  dir=$(mktemp -d)
  CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -ldflags='-s -w' -o "$dir/main" "./functions/$fn"
  rm -f "$out/$fn.zip"
  if command -v zip >/dev/null 2>&1; then
    (cd "$dir" && zip -q -X "$out/$fn.zip" main)
  else
    (cd "$dir" && python3 -c 'import sys,zipfile; z=zipfile.ZipFile(sys.argv[1],"w",zipfile.ZIP_DEFLATED); i=zipfile.ZipInfo("main"); i.external_attr=0o755<<16; i.compress_type=zipfile.ZIP_DEFLATED; z.writestr(i, open("main","rb").read()); z.close()' "$out/$fn.zip")
  fi
  rm -rf "$dir"
  echo "$out/$fn.zip"
done
