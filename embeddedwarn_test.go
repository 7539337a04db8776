package main

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestEmbeddedNATSWarns: a bridge started without --nats-url runs its own
// NATS, and says so at start with a warning naming the address it serves
// and the flag to use a real NATS; a gateway without --nats-url warns that
// it connects to that address.
func TestEmbeddedNATSWarns(t *testing.T) {
	t.Setenv("WSBRIDGE_NATS_URL", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"bridge", "--push-url", "http://127.0.0.1:1/push", "--http-addr", "",
			"--nats-listen", "127.0.0.1:0", "--data-dir", t.TempDir()}, io.Discard, pw)
		pw.Close()
	}()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var warn string
	consuming := false
	for deadline := time.After(60 * time.Second); !consuming; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("bridge exited (%d) before it consumed; warning: %q", <-code, warn)
			}
			if strings.Contains(l, "level=WARN") && strings.Contains(l, "EMBEDDED NATS") {
				warn = l
			}
			consuming = strings.Contains(l, "msg=consuming")
		case <-deadline:
			t.Fatal("the bridge did not start consuming within 60s")
		}
	}
	if warn == "" {
		t.Fatal("the bridge started on an embedded NATS without a warning")
	}
	for _, want := range []string{"--nats-url", "WSBRIDGE_NATS_URL", "embedded_url=nats://127.0.0.1:"} {
		if !strings.Contains(warn, want) {
			t.Errorf("warning %q does not name %s", warn, want)
		}
	}
	cancel()
	go func() {
		for range lines {
		}
	}()
	if c := <-code; c != 0 {
		t.Errorf("bridge exit %d after SIGINT, want 0", c)
	}

	// The gateway warns before it connects; a bad --instance-id then stops
	// it before it touches whatever listens on the default address.
	c, _, stderr := runCmd(t, "gateway", "--instance-id", "no spaces", "--addr", "127.0.0.1:0", "--http-addr", "")
	if c != 2 || !strings.Contains(stderr, "level=WARN") || !strings.Contains(stderr, "NO --nats-url") || !strings.Contains(stderr, defaultOpsURL) {
		t.Errorf("gateway without --nats-url: exit %d, stderr %q; want a warning naming %s, then exit 2", c, stderr, defaultOpsURL)
	}
	if c, _, stderr := runCmd(t, "gateway", "--nats-url", "nats://127.0.0.1:1", "--instance-id", "no spaces", "--addr", "127.0.0.1:0", "--http-addr", ""); c != 2 || strings.Contains(stderr, "WARN") {
		t.Errorf("gateway with --nats-url: exit %d, stderr %q; want no warning", c, stderr)
	}
}
