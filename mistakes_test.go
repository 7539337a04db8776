package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// Item 12 of issue 7: what a new user trips over in the ops commands.
func TestOpsCommandMistakes(t *testing.T) {
	s, js := startTestNATS(t)
	t.Setenv("WSBRIDGE_NATS_URL", s.ClientURL())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"send"}, "want TOKEN and MESSAGE"},
		{[]string{"send", "dG9r"}, "got 1 argument"},
		{[]string{"close"}, "want one TOKEN"},
		{[]string{"broadcast"}, "want one MESSAGE"},
		{[]string{"broadcast", "--group", "g", "--user", "u", "x"}, "not both"},
	} {
		code, _, stderr := runCmd(t, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") > 2 {
			t.Errorf("wsbridge %v: exit %d, stderr %q; want exit 2 and one line with %q", tc.args, code, stderr, tc.want)
		}
	}
	// A token nobody registered: queued, with a warning.
	tok := subjects.Token("nobody")
	for _, args := range [][]string{{"send", tok, "hi"}, {"close", tok}} {
		code, stdout, stderr := runCmd(t, args...)
		if code != 0 || !strings.Contains(stdout, "queued") || !strings.Contains(stderr, "warning: no connection "+tok) {
			t.Errorf("wsbridge %v: exit %d, stdout %q, stderr %q; want queued and a warning", args, code, stdout, stderr)
		}
	}
	// A registered one: no warning.
	kv, err := js.KeyValue(context.Background(), "WS_CONNS")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), subjects.Token("somebody"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd(t, "send", "--id", "somebody", "hi"); code != 0 || stderr != "" {
		t.Errorf("send to a registered connection: exit %d, stderr %q", code, stderr)
	}
	// A raw id past the limit is refused before anything is published.
	if code, _, stderr := runCmd(t, "send", "--id", strings.Repeat("i", subjects.MaxConnIDLen+1), "hi"); code != 1 || !strings.Contains(stderr, "limit") {
		t.Errorf("send --id past the limit: exit %d, stderr %q", code, stderr)
	}
}

// Item 12: the bridge without a push URL names the flag and the variable.
func TestBridgeWithoutPushURL(t *testing.T) {
	t.Setenv("WSBRIDGE_PUSH_URL", "")
	code, _, stderr := runCmd(t, "bridge")
	if code != 2 || !strings.Contains(stderr, "--push-url") || !strings.Contains(stderr, "WSBRIDGE_PUSH_URL") {
		t.Errorf("exit %d, stderr %q; want exit 2 naming --push-url and WSBRIDGE_PUSH_URL", code, stderr)
	}
}

// holdPort listens on a free port for the test and returns its address.
func holdPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// Item 11: a second `wsbridge dev` (its port taken) waited 13.6 s and then
// blamed the embedded server; every listen address is now tried first.
func TestListenAddressInUse(t *testing.T) {
	taken := holdPort(t)
	free := "127.0.0.1:0"
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"dev", "--nats-listen", taken, "--addr", free, "--http-addr", free}, "nats-listen"},
		{[]string{"dev", "--nats-listen", free, "--addr", taken, "--http-addr", free}, "addr"},
		{[]string{"dev", "--nats-listen", free, "--addr", free, "--http-addr", taken}, "http-addr"},
		{[]string{"bridge", "--push-url", "http://127.0.0.1:1/push", "--nats-listen", taken, "--http-addr", free, "--data-dir", t.TempDir()}, "nats-listen"},
		{[]string{"bridge", "--push-url", "http://127.0.0.1:1/push", "--nats-listen", free, "--http-addr", taken, "--data-dir", t.TempDir()}, "http-addr"},
		{[]string{"gateway", "--nats-url", "nats://127.0.0.1:1", "--addr", taken}, "addr"},
	} {
		code, _, stderr := runCmd(t, tc.args...)
		want := "--" + tc.flag + " or " + envName(tc.flag)
		if code != 1 || !strings.Contains(stderr, taken) || !strings.Contains(stderr, "already in use") || !strings.Contains(stderr, want) {
			t.Errorf("wsbridge %v: exit %d, stderr %q; want exit 1 naming %s, in use, and %s", tc.args, code, stderr, taken, want)
		}
	}
}

// Item 11 as a user meets it: the real binary, started while the port it
// wants is taken, fails at once (no start timeout) and says which flag.
func TestDevBinaryPortTaken(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the wsbridge binary")
	}
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")
	taken := holdPort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "dev", "--nats-listen", taken, "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("dev did not exit: %s", out)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("exit %v, want 1", err)
	}
	if !strings.Contains(string(out), taken) || !strings.Contains(string(out), "--nats-listen or WSBRIDGE_NATS_LISTEN") {
		t.Errorf("output %q does not name the address and the flag", out)
	}
}

// Item 1 of issue 7, as a supervisor sees it: a bridge (or dev, whose
// functions, bridge and demo share one connection, or a gateway instance) whose NATS connection is
// closed for good (here: its credentials were revoked, so every reconnect
// is refused) exits non-zero instead of living on half-dead.
func TestBinaryExitsWhenNATSClosed(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the wsbridge binary")
	}
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")
	natsServer := buildNATSServer(t)
	for _, tc := range []struct {
		args    []string
		started string
	}{
		{[]string{"bridge", "--push-url", "http://127.0.0.1:1/push", "--http-addr", ""}, "consuming"},
		{[]string{"dev", "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--demo=false"}, "is running"},
		{[]string{"gateway", "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, "is running"},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			url, revoke := startNATSProcess(t, natsServer, "first")
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			var out buildtest.SyncBuffer
			cmd := exec.CommandContext(ctx, bin, append(tc.args, "--nats-url", url, "--nats-token", "first")...)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(60 * time.Second)
			for !strings.Contains(out.String(), tc.started) {
				if time.Now().After(deadline) {
					t.Fatalf("did not start:\n%s", out.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			revoke("second")
			err := cmd.Wait()
			if ctx.Err() != nil {
				t.Fatalf("did not exit after its connection closed:\n%s", out.String())
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("exit %v, want 1:\n%s", err, out.String())
			}
			if !strings.Contains(out.String(), "closed for good") {
				t.Errorf("output does not say why:\n%s", out.String())
			}
		})
	}
}

// buildNATSServer builds the nats-server command this module depends on.
// TestBinaryExitsWhenNATSClosed runs it as a process of its own: reloading
// an embedded server's authorization while the revoked clients reconnect
// trips the race detector inside nats-server, which is not what the test is
// about.
func buildNATSServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("build nats-server: %v\n%s", err, out)
	}
	return bin
}

// startNATSProcess runs nats-server with JetStream on a free loopback port,
// accepting the token; revoke rewrites its configuration to accept only
// another token and reloads it (SIGHUP), which closes every client that
// used the old one and refuses their reconnects.
func startNATSProcess(t *testing.T, bin, token string) (url string, revoke func(newToken string)) {
	t.Helper()
	store := t.TempDir()
	conf := func(tok string) string {
		return fmt.Sprintf("authorization { token: %q }\njetstream { store_dir: %q }\n", tok, store)
	}
	p := natstest.StartProcess(t, bin, conf(token))
	return p.URL, func(newToken string) {
		t.Helper()
		p.Reload(t, conf(newToken))
	}
}
