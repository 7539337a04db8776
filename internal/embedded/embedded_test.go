package embedded

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestStartAndClose(t *testing.T) {
	n, err := Start(Options{Listen: "127.0.0.1:0", Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	dir := n.Dir
	js, err := jetstream.New(n.Conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}}); err != nil {
		t.Fatalf("JetStream on the embedded server: %v", err)
	}
	if _, err := js.Publish(ctx, "t", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(n.URL(), "nats://127.0.0.1:") || strings.HasSuffix(n.URL(), ":4222") {
		t.Errorf("URL %s, want a free port on 127.0.0.1", n.URL())
	}
	if err := n.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary data dir %s after Close: %v, want it removed", dir, err)
	}
	if !n.Conn.IsClosed() {
		t.Error("connection open after Close")
	}
}

func TestStartKeepsDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	n, err := Start(Options{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("data dir %s after Close: %v, want it kept", dir, err)
	}
}

func TestStartBadListen(t *testing.T) {
	if _, err := Start(Options{Listen: "127.0.0.1"}); err == nil || !strings.Contains(err.Error(), "nats listen address") {
		t.Errorf("Start without a port: %v, want a listen address error", err)
	}
}

func TestSplitHostPort(t *testing.T) {
	for _, tc := range []struct {
		addr string
		host string
		port int
		ok   bool
	}{
		{"127.0.0.1:4222", "127.0.0.1", 4222, true},
		{"[::1]:0", "::1", 0, true},
		{":65535", "", 65535, true},
		{"127.0.0.1:-1", "127.0.0.1", -1, true},
		{"127.0.0.1:65536", "", 0, false},
		{"127.0.0.1:-2", "", 0, false},
		{"127.0.0.1:x", "", 0, false},
		{"127.0.0.1", "", 0, false},
	} {
		host, port, err := SplitHostPort(tc.addr)
		if (err == nil) != tc.ok || (tc.ok && (host != tc.host || port != tc.port)) {
			t.Errorf("SplitHostPort(%q) = %q, %d, %v; want %q, %d, ok %v", tc.addr, host, port, err, tc.host, tc.port, tc.ok)
		}
	}
}
