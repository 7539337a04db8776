#!/usr/bin/env bash
# The test command: installs what the tests use besides Go (the nats CLI and
# Chromium for the end-to-end suites, helm and promtool for the operator's kit),
# checks formatting and vet, runs every test with the race detector, then the
# tests of the kit under deploy/ (a module of its own: chart, dashboard, alerts,
# image build context, release script).
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$(go env GOPATH)/bin:$PATH"

if ! nats --version 2>/dev/null | grep -q '^v0\.5\.0$'; then
  echo "installing the nats CLI (natscli v0.5.0)"
  go install github.com/nats-io/natscli/nats@v0.5.0
fi

# Module versions of the kit's tools (go install builds them; no binary download).
if ! command -v helm >/dev/null 2>&1; then
  echo "installing helm (v3.22.0)"
  go install helm.sh/helm/v3/cmd/helm@v3.22.0
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (prometheus v0.316.0)"
  go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0
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
(cd deploy/kit && go vet ./...)
go test -race -timeout 25m -count=1 ./... "$@"
(cd deploy/kit && go test -timeout 15m -count=1 ./...)
