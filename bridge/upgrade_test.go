package bridge

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
)

// TestUpgradeRefusesAHeldOldLayout runs the real binary on a NATS server
// holding the previous layout (WS_OUT a work queue, consumer WS_BRIDGE,
// messages pending): it refuses to start with one line saying how to
// migrate, and the messages stay. Once the stream is empty it converts it.
func TestUpgradeRefusesAHeldOldLayout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")
	s := startNATS(t)
	js, _ := jetstream.New(connect(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := subjects.MustNew("ws")
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: n.StreamOut(), Subjects: []string{n.Outbound()}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: n.Consumer(), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := js.Publish(ctx, n.Send(subjects.Token("old")), []byte("held")); err != nil {
			t.Fatal(err)
		}
	}
	// run starts the bridge and returns when it exits, or stops it once
	// done reports true.
	run := func(done func(out string) bool) (string, error) {
		cmd := exec.Command(bin, "bridge")
		cmd.Env = append(os.Environ(), "WSBRIDGE_NATS_URL="+s.ClientURL(), "WSBRIDGE_PUSH_URL=http://127.0.0.1:1/api",
			"WSBRIDGE_HTTP_ADDR=", "WSBRIDGE_LOG_FORMAT=text")
		out := &buildtest.SyncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.Now().Add(30 * time.Second)
		for {
			select {
			case err := <-exited:
				return out.String(), err
			case <-time.After(50 * time.Millisecond):
			}
			if done(out.String()) || time.Now().After(deadline) {
				_ = cmd.Process.Signal(syscall.SIGTERM)
				return out.String(), <-exited
			}
		}
	}
	never := func(string) bool { return false }
	out, err := run(never)
	if err == nil || !strings.Contains(out, "drain") || !strings.Contains(out, "WS_OUT holds 3 messages") {
		t.Fatalf("bridge on a held old layout: exit %v, want a refusal saying how to drain\n%s", err, out)
	}
	t.Logf("refusal: %s", strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]))
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 3 || info.Config.Retention != jetstream.WorkQueuePolicy {
		t.Fatalf("old stream after the refusal: %+v %v", info, err)
	}
	if err := st.Purge(ctx); err != nil { // what draining it with the previous version leaves
		t.Fatal(err)
	}
	converted := func() bool {
		st, err := js.Stream(ctx, n.StreamOut())
		if err != nil {
			return false
		}
		cfg := st.CachedInfo().Config
		return cfg.Retention == jetstream.LimitsPolicy && n.OutPartitions(cfg) == subjects.DefaultPartitions
	}
	out, err = run(func(out string) bool { return strings.Contains(out, "msg=consuming") && converted() })
	if !converted() || err != nil {
		t.Errorf("empty old stream not converted, or the bridge did not stop cleanly (%v)\n%s", err, out)
	}
}
