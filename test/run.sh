#!/usr/bin/env bash
# The test command: installs what the tests use besides Go (the nats CLI and
# Chromium for the end-to-end suites), checks formatting and vet, then runs
# every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$(go env GOPATH)/bin:$PATH"

if ! nats --version 2>/dev/null | grep -q '^v0\.5\.0$'; then
  echo "installing the nats CLI (natscli v0.5.0)"
  go install github.com/nats-io/natscli/nats@v0.5.0
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Chromium for the browser test"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
go test -race -timeout 25m -count=1 ./... "$@"
