package edge

import (
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestBridgeStopsQuietly: a bridge stopped with SIGTERM closes its NATS
// connection itself; that is no disconnect to warn about (it logged
// "WARN nats disconnected err=<nil>").
func TestBridgeStopsQuietly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")
	s := natstest.Start(t)
	b := start(t, bin, "bridge", false, "bridge", "--nats-url", s.ClientURL(), "--http-addr", "127.0.0.1:0",
		"--push-url", "http://127.0.0.1:1/push", "--log-level", "debug")
	var ops string
	waitFor(t, "the bridge's ops address", waitTimeout, func() bool {
		_, rest, ok := strings.Cut(b.out.String(), `msg="serving ops endpoints"`)
		_, rest, ok2 := strings.Cut(rest, " addr=")
		ops, _, _ = strings.Cut(rest, "\n")
		return ok && ok2
	})
	waitFor(t, "the bridge to be ready", waitTimeout, func() bool {
		resp, err := http.Get("http://" + strings.Fields(ops)[0] + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.exit(t, waitTimeout); code != 0 {
		t.Errorf("the bridge exited %d after SIGTERM, want 0", code)
	}
	for _, l := range strings.Split(b.out.String(), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "err=<nil>") {
			t.Errorf("a clean stop logged %q", l)
		}
	}
}
