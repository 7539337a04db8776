#!/usr/bin/env bash
# The test command: installs what the tests use besides Go (the nats CLI and
# Chromium for the end-to-end suites, Node.js for the client library's,
# Debian's nats-server 2.9 for the too-old-server checks, helm and promtool for the operator's kit), checks
# formatting and vet, runs every test with the race detector, then the tests
# of the kit under deploy/ (a module of its own: chart, dashboard, alerts,
# image build context, release script).
#
# Every stage runs even when an earlier one failed; the end lists each
# stage's and each package's result and exits 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

export PATH="$(go env GOPATH)/bin:$PATH"

log=$(mktemp -d "${TMPDIR:-/tmp}/wsbridge-test.XXXXXX")
failed=()
stages=()

# stage NAME CMD...: runs one stage, records its result, never stops the script.
stage() {
  local name=$1
  shift
  echo "== $name"
  local start=$SECONDS
  if "$@"; then
    stages+=("ok    $name ($((SECONDS - start))s)")
  else
    stages+=("FAIL  $name ($((SECONDS - start))s)")
    failed+=("$name")
  fi
}

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

install_nats_cli() {
  nats --version 2>/dev/null | grep -q '^v0\.5\.0$' && return 0
  echo "installing the nats CLI (natscli v0.5.0)"
  go install github.com/nats-io/natscli/nats@v0.5.0
}

# Module versions of the kit's tools (go install builds them; no binary download).
install_helm() {
  command -v helm >/dev/null 2>&1 && return 0
  echo "installing helm (v3.22.0)"
  go install helm.sh/helm/v3/cmd/helm@v3.22.0
}
install_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  echo "installing promtool (prometheus v0.316.0)"
  go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

install_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  echo "installing Chromium for the browser test"
  apt_install chromium
}

# Node runs the client library's tests (test/node); npm fetches its one
# dependency, the ws package, there.
install_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && return 0
  echo "installing Node.js and npm for the client library's tests"
  apt_install nodejs npm
}

# A NATS server older than wsbridge needs: the bridge and gateway binaries
# must refuse it in one line (TestRefuseOldNATS). Debian ships 2.9.
install_old_nats_server() {
  command -v nats-server >/dev/null 2>&1 && return 0
  echo "installing Debian's nats-server (2.9) for the version check"
  apt_install nats-server
}

check_gofmt() {
  local unformatted
  unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
  if [ -n "$unformatted" ]; then
    echo "gofmt would change: $unformatted" >&2
    return 1
  fi
}

# run_tests NAME DIR ARGS...: go test in DIR, output kept for the summary.
run_tests() {
  local name=$1 dir=$2
  shift 2
  (cd "$dir" && go test "$@") 2>&1 | tee "$log/$name.out"
}

t0=$SECONDS
stage "install nats CLI" install_nats_cli
stage "install helm" install_helm
stage "install promtool" install_promtool
stage "install chromium" install_chromium
stage "install node" install_node
stage "install nats-server 2.9" install_old_nats_server
stage "gofmt" check_gofmt
stage "go vet" go vet ./...
stage "go vet (deploy/kit)" bash -c 'cd deploy/kit && go vet ./...'
stage "go test -race" run_tests module . -race -timeout 25m -count=1 ./... "$@"
stage "go test (deploy/kit)" run_tests kit deploy/kit -timeout 15m -count=1 ./...

echo
echo "== packages"
for f in "$log"/module.out "$log"/kit.out; do
  [ -f "$f" ] && grep -E '^(ok|FAIL|---)[[:space:]]|^\?[[:space:]]|^panic:' "$f" | grep -Ev '^--- (PASS|SKIP)'
done
echo
echo "== stages"
printf '%s\n' "${stages[@]}"
echo "total $((SECONDS - t0))s"
rm -rf "$log"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all passed"
