package bridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// waitFor polls cond until it holds or the bound passes; the bound is a
// safety net against hangs, not a performance assertion.
func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func startNATS(t testing.TB) *server.Server { return natstest.Start(t) }

func connect(t testing.TB, s *server.Server) *nats.Conn { return natstest.Connect(t, s) }

// push is one push the target received.
type push struct {
	Action, ConnID, DataType, Data string
}

// target is an httptest reverse-push address that records what it accepts.
type target struct {
	srv *httptest.Server
	// answer decides the reply to a push; attempt counts the pushes with
	// the same body so far (1-based). nil answers 200 errNo 0.
	answer func(p push, attempt int) (status, errNo int)

	mu       sync.Mutex
	attempts map[push]int
	ok       map[string][]push // by connection id, the pushes answered 200/0
	total    int               // pushes answered 200/0
	bad      []string
}

func newTarget(t testing.TB, answer func(p push, attempt int) (int, int)) *target {
	tg := &target{answer: answer, attempts: map[push]int{}, ok: map[string][]push{}}
	tg.srv = httptest.NewServer(http.HandlerFunc(tg.serve))
	t.Cleanup(tg.srv.Close)
	return tg
}

func (tg *target) serve(w http.ResponseWriter, r *http.Request) {
	var body subjects.PushBody
	data, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(data, &body); err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		tg.mu.Lock()
		tg.bad = append(tg.bad, string(data))
		tg.mu.Unlock()
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	ws := body.WebSocket
	p := push{Action: ws.Action, ConnID: ws.SecConnectionID, DataType: ws.DataType, Data: ws.Data}
	tg.mu.Lock()
	tg.attempts[p]++
	n := tg.attempts[p]
	tg.mu.Unlock()
	status, errNo := http.StatusOK, 0
	if tg.answer != nil {
		status, errNo = tg.answer(p, n)
	}
	if status == http.StatusOK && errNo == 0 {
		tg.mu.Lock()
		tg.ok[p.ConnID] = append(tg.ok[p.ConnID], p)
		tg.total++
		tg.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	msg := "ok"
	if errNo != 0 || status != http.StatusOK {
		msg = "no"
	}
	fmt.Fprintf(w, `{"errNo":%d,"errMsg":%q}`, errNo, msg)
}

func (tg *target) delivered() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.total
}

func (tg *target) of(connID string) []push {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]push(nil), tg.ok[connID]...)
}

type env struct {
	t     *testing.T
	s     *server.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	names subjects.Names
	tg    *target
	drops atomic.Int64 // partitions the bridges of start and startLogged dropped (see dropCounter)
}

func newEnv(t *testing.T, answer func(p push, attempt int) (int, int)) *env {
	t.Helper()
	s := startNATS(t)
	nc := connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, s: s, nc: nc, js: js, names: subjects.MustNew("ws"), tg: newTarget(t, answer)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := subjects.Provision(ctx, js, e.names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("BRIDGE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// start runs a bridge with fast retries; mod adjusts the options.
func (e *env) start(mod func(*Options)) *Bridge {
	e.t.Helper()
	return e.startLogged(testLogger(e.t), mod)
}

// startLogged is start with a logger of the test's choice.
func (e *env) startLogged(log *slog.Logger, mod func(*Options)) *Bridge {
	e.t.Helper()
	o := Options{
		PushURL:     e.tg.srv.URL + "/api-secret",
		Concurrency: 16,
		BackoffBase: 5 * time.Millisecond,
		BackoffMax:  50 * time.Millisecond,
		MaxAttempts: 5,
	}
	if mod != nil {
		mod(&o)
	}
	return startBridge(e.t, o, Deps{Conn: connect(e.t, e.s), Logger: slog.New(dropCounter{log.Handler(), &e.drops})})
}

// startBridge builds and starts a bridge, stopped when the test ends.
func startBridge(t testing.TB, o Options, deps Deps) *Bridge {
	t.Helper()
	b, err := New(o, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop(context.Background()) })
	return b
}

func (e *env) register(ids ...string) {
	e.t.Helper()
	e.registerEvents(func(ev *subjects.ConnectEvent) {}, ids...)
}

func (e *env) registerEvents(mod func(*subjects.ConnectEvent), ids ...string) {
	e.t.Helper()
	ctx := context.Background()
	kv, err := e.js.KeyValue(ctx, e.names.Bucket())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, id := range ids {
		ev := subjects.ConnectEvent{ConnectionID: id, Token: subjects.Token(id), ConnectedAt: time.Now().UTC(), Groups: []string{}}
		mod(&ev)
		data, _ := json.Marshal(ev)
		if _, err := kv.Put(ctx, ev.Token, data); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) kvHas(token string) bool {
	kv, err := e.js.KeyValue(context.Background(), e.names.Bucket())
	if err != nil {
		e.t.Fatal(err)
	}
	_, err = kv.Get(context.Background(), token)
	return err == nil
}

// waitRecordGone waits for token's registry record to be deleted.
// Forget stores a connection's disconnect event before it deletes the
// record, so the event can be seen a moment before the record goes (on a
// loaded machine, long enough for a check right after the event to fail).
func (e *env) waitRecordGone(t *testing.T, token, what string) {
	t.Helper()
	waitFor(t, what+": the registry record deleted", 20*time.Second, func() bool { return !e.kvHas(token) })
}

// publish stores an outbound message, waiting for the stream's ack.
func (e *env) publish(subject string, data []byte, hdr ...string) {
	e.t.Helper()
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatalf("publish %s: %v", subject, err)
	}
}

// publishAsync stores many messages quickly.
func (e *env) publishAsync(msgs []*nats.Msg) {
	e.t.Helper()
	for _, m := range msgs {
		// A long stall wait: on a busy machine acks lag, and the default
		// 200ms turns a slow publish into a failed test.
		if _, err := e.js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			e.t.Fatal(err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		e.t.Fatal("async publish did not complete")
	}
}

// collector records messages on a core subscription.
type collector struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func (e *env) collect(subject string) *collector {
	e.t.Helper()
	c := &collector{}
	sub, err := e.nc.Subscribe(subject, func(m *nats.Msg) {
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.mu.Unlock()
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.nc.Flush(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return c
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) all() []*nats.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*nats.Msg(nil), c.msgs...)
}

func (c *collector) bySubject(s string) *nats.Msg {
	for _, m := range c.all() {
		if m.Subject == s {
			return m
		}
	}
	return nil
}

// resolved reports whether every partition has resolved (pushed or
// dead-lettered) everything WS_OUT holds, as their committed positions say.
func (e *env) resolved() bool {
	n, err := e.outPending()
	return err == nil && n == 0
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// outPending is the number of outbound commands some partition has not
// resolved yet, as the committed positions say.
func (e *env) outPending() (uint64, error) {
	return subjects.Unresolved(context.Background(), e.js, e.names)
}

// disconnectsOf returns the reasons of the disconnect events c saw for token.
func (e *env) disconnectsOf(c *collector, token string) []string {
	var out []string
	for _, m := range c.all() {
		if m.Subject != e.names.Disconnect(token) {
			continue
		}
		var ev subjects.DisconnectEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			e.t.Fatalf("disconnect body %q: %v", m.Data, err)
		}
		out = append(out, ev.Reason)
	}
	return out
}

// flushCollector publishes a marker on the disconnect subject of a token no
// test uses and waits until c saw it: everything the bridge published
// before (and got a JetStream ack for) has reached c by then.
func (e *env) flushCollector(c *collector) {
	e.t.Helper()
	marker := subjects.Token("marker-" + e.t.Name())
	before := len(e.disconnectsOf(c, marker))
	if err := e.nc.Publish(e.names.Disconnect(marker), []byte(`{"reason":"marker"}`)); err != nil {
		e.t.Fatal(err)
	}
	waitFor(e.t, "the marker", 10*time.Second, func() bool { return len(e.disconnectsOf(c, marker)) > before })
}

func (e *env) kv() jetstream.KeyValue {
	e.t.Helper()
	kv, err := e.js.KeyValue(context.Background(), e.names.Bucket())
	if err != nil {
		e.t.Fatal(err)
	}
	return kv
}

// dropCounter counts the "partition dropped" lines a bridge logs: each is a
// partition cut off as by a crash (a renewal that missed its fence, as on a
// loaded machine), whose next owner may push again, in order, what was
// pushed since its last commit. Tests allow one such repeated window per
// drop on targets that do not drop repeats by Ws-Seq.
type dropCounter struct {
	slog.Handler
	n *atomic.Int64
}

func (h dropCounter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.Handler.Enabled(ctx, l)
}

func (h dropCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "partition dropped" {
		h.n.Add(1)
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h dropCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return dropCounter{h.Handler.WithAttrs(as), h.n}
}

func (h dropCounter) WithGroup(name string) slog.Handler {
	return dropCounter{h.Handler.WithGroup(name), h.n}
}

// countingLogger is testLogger, counting partition drops in n.
func countingLogger(t testing.TB, n *atomic.Int64) *slog.Logger {
	return slog.New(dropCounter{testLogger(t).Handler(), n})
}

// checkWindows checks that got is want, each message once and in order,
// except for at most windows repeated windows: a step back to an earlier
// message, then on in order. It returns the repeats.
func checkWindows(t *testing.T, id string, got, want []int, windows int) int {
	t.Helper()
	at := make(map[int]int, len(want))
	for i, v := range want {
		at[v] = i
	}
	seen := map[int]bool{}
	cur, backs, dups := -1, 0, 0
	for k, v := range got {
		i, ok := at[v]
		switch {
		case !ok:
			t.Errorf("%s: message %d pushed, not meant for it", id, v)
			continue
		case i == cur+1:
		case i <= cur && backs < windows:
			backs++ // a repeated window starts
		default:
			t.Errorf("%s: message %d pushed after %d (push %d of %d, %d repeated windows of %d allowed)", id, v, want[max(cur, 0)], k+1, len(got), backs, windows)
		}
		if seen[v] {
			dups++
		}
		seen[v] = true
		cur = i
	}
	if len(seen) != len(want) {
		t.Errorf("%s: %d distinct messages of %d\ngot  %v\nwant %v", id, len(seen), len(want), got, want)
	}
	return dups
}
