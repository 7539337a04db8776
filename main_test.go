package main

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

func startTestNATS(t *testing.T) (*server.Server, jetstream.JetStream) {
	t.Helper()
	s := natstest.Start(t)
	js, _ := jetstream.New(natstest.Connect(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := subjects.Provision(ctx, js, subjects.MustNew("ws"), subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return s, js
}

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args     []string
		wantCode int
		wantErr  string
	}{
		{nil, 2, "usage: wsbridge <command>"},
		{[]string{"--help"}, 0, "commands:"},
		{[]string{"nope"}, 2, `unknown command "nope"`},
		{[]string{"send", "--help"}, 0, "WSBRIDGE_NATS_URL"},
		{[]string{"send", "onlytoken"}, 2, "want TOKEN and MESSAGE"},
		{[]string{"broadcast", "--group", "g", "--user", "u", "x"}, 2, "not both"},
		{[]string{"send", "--bogus"}, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		code, _, stderr := runCmd(t, tt.args...)
		if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
			t.Errorf("wsbridge %v: code %d stderr %q; want %d and %q", tt.args, code, stderr, tt.wantCode, tt.wantErr)
		}
	}
}

func TestFlagsFromEnv(t *testing.T) {
	fs := newFlagSet("x", "", new(bytes.Buffer))
	url := fs.String("nats-url", "default", "")
	n := fs.Int("push-rate", 1, "")
	env := map[string]string{"WSBRIDGE_NATS_URL": "nats://env:4222", "WSBRIDGE_PUSH_RATE": "7"}
	if err := parseFlags(fs, []string{"--push-rate", "9"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if *url != "nats://env:4222" || *n != 9 {
		t.Errorf("got url %q rate %d; want env url and command-line rate 9", *url, *n)
	}
	env["WSBRIDGE_PUSH_RATE"] = "many"
	fs = newFlagSet("x", "", new(bytes.Buffer))
	fs.Int("push-rate", 1, "")
	if err := parseFlags(fs, nil, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "WSBRIDGE_PUSH_RATE") {
		t.Errorf("bad env value: err = %v, want one naming WSBRIDGE_PUSH_RATE", err)
	}
}

func TestOpsCommands(t *testing.T) {
	s, js := startTestNATS(t)
	t.Setenv("WSBRIDGE_NATS_URL", s.ClientURL())
	ctx := context.Background()
	id := "kGcK4x/+Vf1e7aT3Nd2u1A=="
	tok := subjects.Token(id)

	steps := []struct {
		args    []string
		subject string
		data    string
		header  string
	}{
		{[]string{"send", tok, "hello"}, "ws.out.send." + tok, "hello", ""},
		{[]string{"send", "--id", "--binary", id, "bin"}, "ws.out.send." + tok, "bin", "binary"},
		{[]string{"close", tok}, "ws.out.close." + tok, "", ""},
		{[]string{"broadcast", "--exclude", tok, "all"}, "ws.out.broadcast", "all", ""},
		{[]string{"broadcast", "--group", "room1", "g"}, "ws.out.group.room1", "g", ""},
		{[]string{"broadcast", "--user", "alice", "u"}, "ws.out.user.alice", "u", ""},
	}
	st, _ := js.Stream(ctx, "WS_OUT")
	for i, step := range steps {
		code, stdout, stderr := runCmd(t, step.args...)
		if code != 0 {
			t.Fatalf("wsbridge %v: exit %d: %s", step.args, code, stderr)
		}
		if !strings.Contains(stdout, step.subject) {
			t.Errorf("wsbridge %v printed %q, want the subject %s", step.args, stdout, step.subject)
		}
		m, err := st.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		stored, _ := subjects.MustNew("ws").ParseStored(m.Subject) // stored per partition
		if stored.Original != step.subject || string(m.Data) != step.data || m.Header.Get(subjects.HeaderDataType) != step.header {
			t.Errorf("wsbridge %v stored %s %q %q", step.args, m.Subject, m.Data, m.Header.Get(subjects.HeaderDataType))
		}
	}
	if code, _, stderr := runCmd(t, "send", "not+a+token", "x"); code != 1 || !strings.Contains(stderr, "bad connection token") {
		t.Errorf("bad token: exit %d, stderr %q", code, stderr)
	}
}

func TestConnsReadsRegistryWithoutBridge(t *testing.T) {
	s, js := startTestNATS(t)
	t.Setenv("WSBRIDGE_NATS_URL", s.ClientURL())
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, "WS_CONNS")
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range []string{"alice", "bob", "alice"} {
		id := string(rune('a'+i)) + "=="
		ce := subjects.ConnectEvent{ConnectionID: id, Token: subjects.Token(id), UserID: u, Groups: []string{"g" + u}}
		b, _ := json.Marshal(ce)
		if _, err := kv.Put(ctx, ce.Token, b); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := runCmd(t, "conns", "--user", "alice", "--json")
	if code != 0 {
		t.Fatalf("conns: exit %d: %s", code, stderr)
	}
	var reply subjects.ConnListReply
	if err := json.Unmarshal([]byte(stdout), &reply); err != nil {
		t.Fatalf("conns --json printed %q: %v", stdout, err)
	}
	if reply.Total != 2 || len(reply.Connections) != 2 {
		t.Errorf("conns --user alice: total %d, %d listed; want 2", reply.Total, len(reply.Connections))
	}
}

func TestTail(t *testing.T) {
	s, js := startTestNATS(t)
	t.Setenv("WSBRIDGE_NATS_URL", s.ClientURL())
	tok := subjects.Token("c1")
	done := make(chan struct{})
	var code int
	var stdout, stderr string
	// Three lines: the message and dead-letter subscriptions hand lines
	// over from two goroutines, so the first two may both be dead letters
	// (the first message published before tail subscribed).
	go func() {
		defer close(done)
		code, stdout, stderr = runCmd(t, "tail", "--dlq", "--count", "3")
	}()
	// Publish until tail has subscribed and printed both lines.
	ctx := context.Background()
	deadline := time.After(10 * time.Second)
	for {
		_, _ = js.Publish(ctx, "ws.in.message."+tok, []byte("hi"))
		_, _ = js.PublishMsg(ctx, &nats.Msg{Subject: "ws.dlq.send." + tok, Data: []byte("lost"), Header: nats.Header{subjects.HeaderError: []string{"gone"}}})
		select {
		case <-done:
			if code != 0 {
				t.Fatalf("tail: exit %d: %s", code, stderr)
			}
			if !strings.Contains(stdout, "in.message "+tok+" hi") {
				t.Errorf("tail printed %q, want the message line", stdout)
			}
			return
		case <-deadline:
			t.Fatal("tail did not print three lines")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitTimeout bounds a wait in these tests; a safety net against hangs, not
// a speed check.
const waitTimeout = 30 * time.Second

// tailHandler names runTail's message handler in a goroutine dump.
const tailHandler = "wsbridge.runTail.func"

// TestTailCountStopsSubscription runs tail in process with a context that
// outlives it and returns while its handler is blocked on a full buffer with
// more messages behind: no handler of it may be left once it has returned.
func TestTailCountStopsSubscription(t *testing.T) {
	s, _ := startTestNATS(t)
	t.Setenv("WSBRIDGE_NATS_URL", s.ClientURL())
	nc := natstest.Connect(t, s)
	tok := subjects.Token("c1")
	// The second line's write waits until the handler is blocked again.
	out := &gatedWriter{open: 1, gate: make(chan struct{})}
	var errb bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), []string{"tail", "--count", "2"}, out, &errb) }()
	waitStacks(t, "tail's handler blocked on its full buffer", func(gs []string) bool {
		if handlerBlocked(gs) {
			return true
		}
		_ = nc.Publish("ws.in.message."+tok, []byte("hi"))
		return false
	})
	for range 2 * tailBuffer {
		_ = nc.Publish("ws.in.message."+tok, []byte("hi"))
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitStacks(t, "tail printing its last line, its handler blocked", func(gs []string) bool {
		return handlerBlocked(gs) && slices.ContainsFunc(gs, func(g string) bool { return strings.Contains(g, "gatedWriter") })
	})
	close(out.gate)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("tail: exit %d: %s", code, errb.String())
		}
	case <-time.After(waitTimeout):
		t.Fatal("tail --count 2 did not return")
	}
	waitStacks(t, "tail's handler to end", func(gs []string) bool {
		return !slices.ContainsFunc(gs, func(g string) bool { return strings.Contains(g, tailHandler) })
	})
}

// handlerBlocked reports tail's handler waiting to hand a line over.
func handlerBlocked(gs []string) bool {
	return slices.ContainsFunc(gs, func(g string) bool {
		return strings.Contains(g, tailHandler) && strings.Contains(g, "[select")
	})
}

// waitStacks polls the goroutine dump, one string per goroutine, until cond
// holds of it.
func waitStacks(t *testing.T, what string, cond func(goroutines []string) bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		buf := make([]byte, 4<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if cond(strings.Split(stacks, "\n\n")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s:\n%s", what, stacks)
		}
		time.Sleep(time.Millisecond)
	}
}

// gatedWriter lets the first open writes through and holds the others
// until gate is closed.
type gatedWriter struct {
	open int
	gate chan struct{}
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	pass := w.open > 0
	w.open--
	w.mu.Unlock()
	if !pass {
		<-w.gate
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}
