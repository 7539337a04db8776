package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
)

// natsCLI finds the nats CLI (natscli v0.5.0) that test/run.sh installs.
func natsCLI(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(dir, "bin", "nats")
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				return p
			}
		}
	}
	if os.Getenv("WSBRIDGE_E2E_SKIP_CLI") == "1" {
		t.Skip("nats CLI not found and WSBRIDGE_E2E_SKIP_CLI=1")
	}
	t.Fatal("the nats CLI is not on PATH nor in $(go env GOPATH)/bin: run test/run.sh, which installs " +
		"natscli v0.5.0, or set WSBRIDGE_E2E_SKIP_CLI=1 to skip this test")
	return ""
}

// runNATS runs one nats CLI command against url with a private
// configuration directory, so no user context interferes.
func runNATS(ctx context.Context, bin, cfg, url string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, append([]string{"--server", url}, args...)...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+cfg, "HOME="+cfg, "NATS_CONTEXT=")
	return cmd
}

// TestNATSCLIBackend drives the flow with the nats CLI as the business
// service: `nats sub` sees the client's message, `nats pub` reaches the
// client, and `nats req` reads the registry through the bridge's API.
func TestNATSCLIBackend(t *testing.T) {
	t.Parallel()
	bin := natsCLI(t)
	cfg := t.TempDir()
	st := startStack(t, nil)
	svc := newService(t, st)
	rec := svc.record(t)
	c := dialKnown(t, st, rec)
	names := svc.names
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()

	// nats sub: wait until the server has its subscription (one more
	// interest in the message subject than the stream's), then send.
	msgSubject := names.Message(c.token)
	acc := st.NATS.GlobalAccount()
	before := acc.Interest(msgSubject)
	var subOut, subErr bytes.Buffer
	sub := runNATS(ctx, bin, cfg, st.NATSURL(), "sub", names.Inbound(), "--count", "1")
	sub.Stdout, sub.Stderr = &subOut, &subErr
	if err := sub.Start(); err != nil {
		t.Fatalf("nats sub: %v", err)
	}
	subDone := make(chan error, 1)
	go func() { subDone <- sub.Wait() }()
	waitFor(t, "`nats sub` to subscribe", func() bool { return acc.Interest(msgSubject) > before })
	c.write(t, websocket.MessageText, []byte("hi from the client"))
	select {
	case err := <-subDone:
		if err != nil {
			t.Fatalf("nats sub: %v\nstdout: %s\nstderr: %s", err, subOut.String(), subErr.String())
		}
	case <-time.After(waitTimeout):
		t.Fatalf("nats sub --count 1 did not finish after %v\nstdout: %s\nstderr: %s", waitTimeout, subOut.String(), subErr.String())
	}
	out := subOut.String() + subErr.String()
	for _, want := range []string{msgSubject, "hi from the client", subjects.HeaderDataType + ": text"} {
		if !strings.Contains(out, want) {
			t.Errorf("nats sub output lacks %q:\n%s", want, out)
		}
	}

	pub := func(args ...string) {
		t.Helper()
		if out, err := runNATS(ctx, bin, cfg, st.NATSURL(), append([]string{"pub"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("nats pub %q: %v\n%s", args, err, out)
		}
	}
	pub(names.Send(c.token), "hi")
	c.expectText(t, "hi")
	pub(names.Send(c.token), "raw bytes", "-H", subjects.HeaderDataType+":"+subjects.DataBinary)
	if f := c.next(t, "the binary push"); f.typ != websocket.MessageBinary || string(f.data) != "raw bytes" {
		t.Fatalf("binary push: got %v %q, want binary %q", f.typ, f.data, "raw bytes")
	}
	svc.waitListed(t, subjects.ConnListRequest{}, 1)
	pub(names.Broadcast(), "to everyone")
	c.expectText(t, "to everyone")

	reqOut, err := runNATS(ctx, bin, cfg, st.NATSURL(), "req", names.ConnGet(), `{"token":"`+c.token+`"}`, "--raw").Output()
	if err != nil {
		t.Fatalf("nats req %s: %v\n%s", names.ConnGet(), err, reqOut)
	}
	var got subjects.ConnectEvent
	if err := json.Unmarshal(bytes.TrimSpace(reqOut), &got); err != nil || got.Token != c.token {
		t.Errorf("nats req %s: %q (%v), want the record of %s", names.ConnGet(), reqOut, err, c.token)
	}

	pub(names.Close(c.token), "")
	if code := websocket.CloseStatus(c.closed(t)); code == -1 {
		t.Errorf("client ended without a close frame: %v", c.err)
	}
	rec.wait(t, "disconnect with reason closed", func(ev subjects.Event) bool {
		return ev.Kind == subjects.KindDisconnect && ev.Token == c.token && ev.Disconnect.Reason == subjects.ReasonClosed
	})
}
