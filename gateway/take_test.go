package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// sessEdge is an edge instance serving clients and pushes on listeners of
// its own, advertising its real push URL.
type sessEdge struct {
	g        *Gateway
	fn       *fakeFn
	stop     func() error
	ws, push string // URLs
}

func startSessEdge(t *testing.T, natsURL, id string) *sessEdge {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	fn := &fakeFn{}
	var logs bytes.Buffer
	var mu sync.Mutex
	o := Options{Register: fn, Transfer: fn, Cleanup: fn, Addr: "127.0.0.1:0", PushAddr: "127.0.0.1:0",
		NATS: nc, InstanceID: id, InstanceTTL: time.Second,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ls, err := Listen(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	o.PushURL = "http://" + ls.Push.Addr().String() + DefaultPushPath
	g, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.ServeAll(ctx, ls) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() { cancel(); serveErr = <-done })
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("%s: ServeAll: %v", id, err)
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("%s log:\n%s", id, logs.String())
			mu.Unlock()
		}
	})
	e := &sessEdge{g: g, fn: fn, stop: stop, ws: "ws://" + ls.WS.Addr().String() + DefaultWSPath, push: o.PushURL}
	// Served once advertised (ServeAll starts serving after that).
	waitFor(t, id+" serving", func() bool {
		resp, err := http.Get(e.push)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.Header.Get(HeaderInstance) == id
	})
	return e
}

// pushTo POSTs a text push to an instance's push URL.
func pushTo(t *testing.T, pushURL, id, s string) (int, string) {
	t.Helper()
	resp, err := http.Post(pushURL, "application/json", strings.NewReader(pushBody(subjects.ActionDataSend, id, subjects.DataText, s)))
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func mustPushTo(t *testing.T, pushURL, id, s string) {
	t.Helper()
	if st, body := pushTo(t, pushURL, id, s); st != http.StatusOK {
		t.Fatalf("push %q to %s: %d %s", s, pushURL, st, body)
	}
}

// A session resumed at another instance is taken from the one holding it:
// what it kept arrives once and in order, the old holder answers pushes for
// it with 503 (the bridge retries), the registry record names the new
// holder, the key names it too, and the session can move back. Neither
// instance ends the connection: no cleanup, no disconnect event.
func TestSessionMovesBetweenInstances(t *testing.T) {
	s := natstest.Start(t)
	nc, js, names := provisioned(t, s)
	discs := disconnects(t, nc, names)
	a := startSessEdge(t, s.ClientURL(), "edge-a")
	b := startSessEdge(t, s.ClientURL(), "edge-b")

	sc := newSessClient(t, a.ws)
	id := sc.welcome.ID
	if h, _, _, _ := parseKey(sc.welcome.Key); h != "edge-a" {
		t.Fatalf("key %q does not name its holder edge-a", sc.welcome.Key)
	}
	// The registry record the register function writes.
	ctx := context.Background()
	reg, err := js.KeyValue(ctx, names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(subjects.ConnectEvent{ConnectionID: id, Token: subjects.Token(id), UserID: "u1", Groups: []string{"g1"}})
	if _, err := reg.Put(ctx, subjects.Token(id), rec); err != nil {
		t.Fatal(err)
	}

	mustPushTo(t, a.push, id, "1")
	mustPushTo(t, a.push, id, "2")
	sc.data()
	sc.data()
	sc.drop()
	waitFor(t, "the session suspended at edge-a", func() bool { return a.g.sessSuspended.Load() == 1 })
	mustPushTo(t, a.push, id, "3")

	w, reason := sc.resume(b.ws, 1) // the client missed 2
	if reason != "" {
		t.Fatalf("resume at edge-b refused: %s", reason)
	}
	if w.ID != id || !*w.Resumed {
		t.Fatalf("welcome at edge-b: %+v", w)
	}
	if h, _, _, _ := parseKey(w.Key); h != "edge-b" {
		t.Errorf("key after the move %q does not name edge-b", w.Key)
	}
	for _, want := range []string{"2", "3"} {
		if got := sc.data(); got != want {
			t.Fatalf("after the move got %q, want %q", got, want)
		}
	}
	if st, body := pushTo(t, a.push, id, "4"); st != http.StatusServiceUnavailable || !strings.Contains(body, "edge-b") {
		t.Errorf("push to the old holder: %d %s, want 503 naming edge-b", st, body)
	}
	mustPushTo(t, b.push, id, "4")
	if got := sc.data(); got != "4" {
		t.Fatalf("got %q, want 4", got)
	}
	waitFor(t, "the registry record names edge-b", func() bool {
		en, err := reg.Get(ctx, subjects.Token(id))
		if err != nil {
			return false
		}
		var r subjects.ConnectEvent
		return json.Unmarshal(en.Value(), &r) == nil && r.Instance == "edge-b" && r.UserID == "u1" && len(r.Groups) == 1
	})

	// And back: the key names edge-b now, and edge-a takes it from there.
	sc.drop()
	waitFor(t, "the session suspended at edge-b", func() bool { return b.g.sessSuspended.Load() == 1 })
	mustPushTo(t, b.push, id, "5")
	if _, reason := sc.resume(a.ws, sc.received); reason != "" {
		t.Fatalf("resume back at edge-a refused: %s", reason)
	}
	if got := sc.data(); got != "5" {
		t.Fatalf("got %q, want 5", got)
	}

	// A rolling restart: edge-a stops, closing the client with 1001; its
	// session waits for the client, which resumes at edge-b, and edge-a
	// exits then, well before the window.
	stopped := make(chan error, 1)
	go func() { stopped <- a.stop() }()
	if st := closeStatus(t, sc.ws); st != statusGoingAway {
		t.Fatalf("stopping edge-a closed the client with %d, want 1001", st)
	}
	waitFor(t, "the session suspended at edge-a", func() bool { return a.g.sessSuspended.Load() == 1 })
	mustPushTo(t, a.push, id, "6") // kept while edge-a drains
	if _, reason := sc.resume(b.ws, sc.received); reason != "" {
		t.Fatalf("resume at edge-b during edge-a's shutdown refused: %s", reason)
	}
	if got := sc.data(); got != "6" {
		t.Fatalf("got %q, want 6", got)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("edge-a: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("edge-a still draining after its only session moved")
	}
	for _, e := range []*sessEdge{a, b} {
		if n := e.fn.cleanups(id); n != 0 {
			t.Errorf("cleanup invoked %d times", n)
		}
	}
	select {
	case m := <-discs:
		t.Errorf("disconnect event %s: %s", m.Subject, m.Data)
	case <-time.After(300 * time.Millisecond):
	}
	if n := len(a.fn.of(subjects.ActionConnecting)) + len(b.fn.of(subjects.ActionConnecting)); n != 1 {
		t.Errorf("register invoked %d times, want 1", n)
	}
	// A close frame ends it for good: one cleanup, at edge-b.
	_ = sc.ws.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "cleanup at edge-b", func() bool { return b.fn.cleanups(id) == 1 })
}

// A suspended session whose registry record was swept (another instance or a
// bridge announced it lost while this one was cut off from NATS) ends when
// the instance reconciles: no event of its own, and its client, back, is
// told lost. One whose record is there stays.
func TestReconcileEndsSweptSessions(t *testing.T) {
	s := natstest.Start(t)
	_, js, names := provisioned(t, s)
	a := startSessEdge(t, s.ClientURL(), "edge-a")
	ctx := context.Background()
	reg, err := js.KeyValue(ctx, names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	swept, kept := newSessClient(t, a.ws), newSessClient(t, a.ws)
	for _, sc := range []*sessClient{swept, kept} {
		if _, err := reg.Put(ctx, subjects.Token(sc.welcome.ID), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		sc.drop()
	}
	waitFor(t, "both sessions suspended", func() bool { return a.g.sessSuspended.Load() == 2 })
	mustPushTo(t, a.push, swept.welcome.ID, "kept while away")
	if err := reg.Delete(ctx, subjects.Token(swept.welcome.ID)); err != nil {
		t.Fatal(err)
	}
	a.g.edge.reconcile()
	if _, reason := swept.resume(a.ws, 0); reason != resetLost {
		t.Errorf("resume of the swept session: %q, want %q", reason, resetLost)
	}
	if _, reason := kept.resume(a.ws, 0); reason != "" {
		t.Errorf("resume of the other: refused %q", reason)
	}
	if n := a.fn.cleanups(swept.welcome.ID); n != 0 {
		t.Errorf("cleanup invoked %d times for the swept session (its end was announced)", n)
	}
	dlq, err := js.Stream(ctx, names.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "what it kept dead-lettered", func() bool {
		info, err := dlq.Info(ctx)
		return err == nil && info.State.Msgs == 1
	})
	_ = kept.ws.Close(websocket.StatusNormalClosure, "") // ended, so the instance stops without waiting for it
}
