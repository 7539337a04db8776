// Package kit tests the operator's kit under deploy/: the container image's
// Dockerfile and build context, the release script, the Helm chart, the
// Grafana dashboard and the Prometheus alert rules. It is a module of its own
// so Helm's, Kubernetes' and Prometheus' modules stay out of wsbridge's
// go.mod; run it with `(cd deploy/kit && go test ./...)` (test/run.sh does).
//
// Its tests run helm and promtool, which test/run.sh installs with go install
// when missing.
package kit
