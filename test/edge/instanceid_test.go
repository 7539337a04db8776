package edge

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestDuplicateInstanceID is two instances started with default flags on
// one machine: both took the host name as their instance id, so pushes to
// one instance's clients went to the other and each swept the other's
// connections as lost. The second is now refused at start, naming
// --instance-id, while the first runs; the first restarted after a SIGKILL
// on its push address (its record still live) starts at once.
func TestDuplicateInstanceID(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	host, err := os.Hostname()
	if err != nil || subjects.CheckInstanceID(host) != nil {
		t.Skipf("the host name %q is not a valid instance id (%v): the default needs one", host, err)
	}
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")
	s := natstest.Start(t)
	pushAddr := "127.0.0.1:" + strconv.Itoa(natstest.FreePort(t))
	args := func(push string) []string {
		return []string{"gateway", "--nats-url", s.ClientURL(), "--addr", "127.0.0.1:0", "--push-addr", push,
			"--http-addr", "127.0.0.1:0", "--instance-ttl", "3s", "--log-level", "debug"}
	}
	first := start(t, bin, "first", true, args(pushAddr)...)

	second := start(t, bin, "second", false, args("127.0.0.1:0")...)
	if code := second.exit(t, waitTimeout); code != 1 {
		t.Errorf("the second instance with the same id exited %d, want 1", code)
	}
	if out := second.out.String(); !strings.Contains(out, "--instance-id") || !strings.Contains(out, host) {
		t.Errorf("the second instance's output does not name --instance-id and %q:\n%s", host, out)
	}
	// The first still holds the id.
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), subjects.MustNew(subjects.DefaultPrefix).GatewayBucket())
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), host)
	if err != nil {
		t.Fatalf("the instance record of %s: %v", host, err)
	}
	if !strings.Contains(string(e.Value()), pushAddr) {
		t.Errorf("the record of %s is %s, want the first instance's (push address %s)", host, e.Value(), pushAddr)
	}

	// A restart of the first on its own push address is an earlier life
	// of the same instance, not a duplicate.
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.exit(t, waitTimeout)
	again := start(t, bin, "first again", true, args(pushAddr)...)
	// Logged once the instance has claimed its id and advertised itself.
	waitFor(t, "the restarted instance to serve", waitTimeout, func() bool { return strings.Contains(again.out.String(), "gateway listening") })
	if err := again.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := again.exit(t, waitTimeout); code != 0 {
		t.Errorf("the restarted instance exited %d after SIGTERM, want 0", code)
	}
}
