package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

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

// Item 1: a deleted record's delete marker ages out after the TTL and the
// server replaces it with a MaxAge marker (a purge to the watcher); that
// connection already left and must not be announced as expired.
func TestDeleteMarkerAgeOutNotAnnouncedExpired(t *testing.T) {
	e := newEnv(t, nil)
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	const ttl = time.Second
	e.start(func(o *Options) { o.Streams.RegistryTTL = ttl })
	left, stays := "left-conn==", "stays-conn=="
	e.register(left)
	deleted := time.Now()
	if err := e.kv().Delete(context.Background(), subjects.Token(left)); err != nil {
		t.Fatal(err)
	}
	// Registered after the delete: its record ages out after the delete
	// marker, so its expired event (positive control) comes after any the
	// deleted one would get.
	e.register(stays)
	waitFor(t, "the control's expired disconnect", 30*time.Second, func() bool {
		return len(e.disconnectsOf(disc, subjects.Token(stays))) > 0
	})
	if d := 2*ttl + 500*time.Millisecond - time.Since(deleted); d > 0 {
		time.Sleep(d) // more than two TTLs after the delete, whatever the server's timer
	}
	e.flushCollector(disc)
	if got := e.disconnectsOf(disc, subjects.Token(stays)); len(got) != 1 || got[0] != subjects.ReasonExpired {
		t.Errorf("control connection: disconnects %v, want [expired]", got)
	}
	if got := e.disconnectsOf(disc, subjects.Token(left)); len(got) != 0 {
		t.Errorf("deleted connection: disconnects %v, want none", got)
	}
}

// Item 2: several messages queued for a connection the gateway reports gone
// are each dead-lettered, but the connection is announced gone once.
func TestGoneAnnouncedOncePerConnection(t *testing.T) {
	e := newEnv(t, func(p push, attempt int) (int, int) {
		if p.ConnID == "gone-many" {
			return http.StatusNotFound, 404
		}
		return http.StatusOK, 0
	})
	tok := subjects.Token("gone-many")
	e.register("gone-many")
	dlq := e.collect(e.names.DeadLetters())
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	for i := 0; i < 5; i++ {
		e.publish(e.names.Send(tok), []byte("queued"))
	}
	e.start(nil)
	waitFor(t, "five dead letters", 20*time.Second, func() bool { return dlq.len() >= 5 })
	waitFor(t, "stream drained", 10*time.Second, e.streamEmpty)
	e.flushCollector(disc)
	if n := dlq.len(); n != 5 {
		t.Errorf("%d dead letters, want 5", n)
	}
	if got := e.disconnectsOf(disc, tok); len(got) != 1 || got[0] != subjects.ReasonGone {
		t.Errorf("disconnects %v, want exactly one gone", got)
	}
	if e.kvHas(tok) {
		t.Error("registry still holds the gone connection")
	}
}

// Item 3: a connection that keeps receiving pushes stays registered past
// the TTL; one that receives nothing expires.
func TestActiveConnectionRefreshed(t *testing.T) {
	e := newEnv(t, nil)
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	const ttl = 2 * time.Second
	b := e.start(func(o *Options) { o.Streams.RegistryTTL = ttl })
	active, idle := "active-conn", "idle-conn"
	e.register(active, idle)
	waitFor(t, "both indexed", 10*time.Second, func() bool { return b.idx.size() == 2 })
	begin := time.Now()
	for time.Since(begin) < 3*ttl+time.Second {
		e.publish(e.names.Send(subjects.Token(active)), []byte("tick"))
		time.Sleep(300 * time.Millisecond)
	}
	waitFor(t, "the idle connection's expired disconnect", 30*time.Second, func() bool {
		return len(e.disconnectsOf(disc, subjects.Token(idle))) > 0
	})
	e.publish(e.names.Broadcast(), []byte("still there?"))
	waitFor(t, "stream drained", 10*time.Second, e.streamEmpty)
	e.flushCollector(disc)
	var got int
	for _, p := range e.tg.of(active) {
		if p.Data == "still there?" {
			got++
		}
	}
	if got != 1 {
		t.Errorf("broadcast reached the active connection %d times, want 1", got)
	}
	if d := e.disconnectsOf(disc, subjects.Token(active)); len(d) != 0 {
		t.Errorf("active connection: disconnects %v, want none", d)
	}
	if !e.kvHas(subjects.Token(active)) {
		t.Error("active connection's record expired")
	}
	for _, p := range e.tg.of(idle) {
		t.Errorf("idle connection got %+v after expiring", p)
	}
}

// listAnswer decodes a conn.list answer, the truncation flag included.
type listAnswer struct {
	Connections []subjects.ConnectEvent `json:"connections"`
	Total       int                     `json:"total"`
	Truncated   bool                    `json:"truncated"`
	Error       string                  `json:"error"`
}

// Item 4: conn.list stays within the NATS payload limit and says so when it
// left records out.
func TestConnListBoundedBySize(t *testing.T) {
	e := newEnv(t, nil)
	e.start(nil)
	const n = 30
	blob := strings.Repeat("x", 64<<10)
	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, "big-"+string(rune('a'+i%26))+strings.Repeat("z", i/26))
	}
	e.registerEvents(func(ev *subjects.ConnectEvent) {
		ev.State = json.RawMessage(`{"blob":"` + blob + `"}`)
	}, ids...)
	var r listAnswer
	waitFor(t, "all records indexed", 10*time.Second, func() bool {
		msg, err := e.nc.Request(e.names.ConnList(), []byte(`{}`), 5*time.Second)
		if err != nil {
			t.Fatalf("conn.list: %v", err)
		}
		if len(msg.Data) >= int(e.nc.MaxPayload()) {
			t.Fatalf("reply of %d bytes, max payload %d", len(msg.Data), e.nc.MaxPayload())
		}
		r = listAnswer{}
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r.Total == n
	})
	if r.Error != "" || !r.Truncated || len(r.Connections) == 0 || len(r.Connections) >= n {
		t.Errorf("conn.list: %d connections of %d, truncated %v, error %q; want some but not all, truncated",
			len(r.Connections), r.Total, r.Truncated, r.Error)
	}
	// A count limit that leaves records out is a truncation too.
	msg, err := e.nc.Request(e.names.ConnList(), []byte(`{"limit":2}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r = listAnswer{}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Connections) != 2 || r.Total != n || !r.Truncated {
		t.Errorf("limit 2: %d connections of %d, truncated %v", len(r.Connections), r.Total, r.Truncated)
	}
}

// Item 4: a registry read that fails for another reason than a missing key
// fails the request instead of silently shortening the list.
func TestConnListReadErrorFails(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(nil)
	e.register("listed")
	waitFor(t, "indexed", 10*time.Second, func() bool { return b.idx.size() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out, err := b.apiConnList(ctx, []byte(`{}`))
	if err == nil {
		t.Fatalf("conn.list with a failing registry read answered %+v, want an error", out)
	}
	// A record deleted since the index saw it is skipped, not an error.
	b.idx.put(subjects.Token("ghost"), []byte(`{}`))
	out, err = b.apiConnList(context.Background(), []byte(`{}`))
	if err != nil {
		t.Fatalf("conn.list with a vanished record: %v", err)
	}
	data, _ := json.Marshal(out)
	var r listAnswer
	if err := json.Unmarshal(data, &r); err != nil || len(r.Connections) != 1 || r.Connections[0].ConnectionID != "listed" {
		t.Errorf("conn.list = %s (%v), want the one live record", data, err)
	}
}

// countHandler counts the log records whose message starts with prefix.
type countHandler struct {
	prefix string
	n      *atomic.Int64
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.prefix) {
		h.n.Add(1)
	}
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// Item 5: while the dead letter of a message cannot be published, later
// messages to the same connection wait for it.
func TestDeadLetterFailureKeepsOrder(t *testing.T) {
	tok := subjects.Token("dl-order")
	var e *env
	var secondPushed, secondAfterDL atomic.Bool
	e = newEnv(t, func(p push, attempt int) (int, int) {
		if p.ConnID != "dl-order" {
			return http.StatusOK, 0
		}
		switch p.Data {
		case "first":
			return http.StatusBadRequest, 0
		case "second":
			if !secondPushed.Swap(true) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				st, err := e.js.Stream(ctx, e.names.StreamDLQ())
				if err == nil {
					_, err = st.GetLastMsgForSubject(ctx, e.names.DeadLetter(subjects.KindSend, tok))
				}
				secondAfterDL.Store(err == nil)
			}
		}
		return http.StatusOK, 0
	})
	var failures atomic.Int64
	e.startLogged(slog.New(countHandler{prefix: "dead letter failed", n: &failures}), nil)
	if err := e.js.DeleteStream(context.Background(), e.names.StreamDLQ()); err != nil {
		t.Fatal(err)
	}
	e.publish(e.names.Send(tok), []byte("first"))
	waitFor(t, "a failed dead letter", 20*time.Second, func() bool { return failures.Load() >= 1 })
	e.publish(e.names.Send(tok), []byte("second"))
	e.publish(e.names.Send(tok), []byte("third"))
	// Give the later messages several backoff rounds to overtake.
	waitFor(t, "more failed dead letters", 20*time.Second, func() bool { return failures.Load() >= 5 })
	if err := subjects.Provision(context.Background(), e.js, e.names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two pushes", 20*time.Second, func() bool { return len(e.tg.of("dl-order")) >= 2 })
	waitFor(t, "stream drained", 10*time.Second, e.streamEmpty)
	if !secondAfterDL.Load() {
		t.Error("second message pushed before the first one's dead letter was stored")
	}
	var got []string
	for _, p := range e.tg.of("dl-order") {
		got = append(got, p.Data)
	}
	if strings.Join(got, ",") != "second,third" {
		t.Errorf("pushes %v, want second,third", got)
	}
	st, err := e.js.Stream(context.Background(), e.names.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), e.names.DeadLetter(subjects.KindSend, tok))
	if err != nil || string(m.Data) != "first" {
		t.Errorf("dead letter: %v %v", m, err)
	}
}

// stallMsg is an outbound message whose Metadata blocks until released.
type stallMsg struct {
	jetstream.Msg // nil: a method not below panics
	subject       string
	entered       chan struct{}
	release       chan struct{}
	once          sync.Once
	naks, acks    atomic.Int64
}

func (m *stallMsg) Metadata() (*jetstream.MsgMetadata, error) {
	m.once.Do(func() { close(m.entered) })
	<-m.release
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 1 << 40, Consumer: 1 << 40},
		NumDelivered: 1, Timestamp: time.Now()}, nil
}
func (m *stallMsg) Subject() string                  { return m.subject }
func (m *stallMsg) Reply() string                    { return "" }
func (m *stallMsg) Data() []byte                     { return []byte("late") }
func (m *stallMsg) Headers() nats.Header             { return nats.Header{} }
func (m *stallMsg) Ack() error                       { m.acks.Add(1); return nil }
func (m *stallMsg) DoubleAck(context.Context) error  { m.acks.Add(1); return nil }
func (m *stallMsg) Nak() error                       { m.naks.Add(1); return nil }
func (m *stallMsg) NakWithDelay(time.Duration) error { m.naks.Add(1); return nil }
func (m *stallMsg) InProgress() error                { return nil }
func (m *stallMsg) Term() error                      { return errors.New("unexpected term") }
func (m *stallMsg) TermWithReason(string) error      { return errors.New("unexpected term") }
func (m *stallMsg) String() string                   { return m.subject }

// Item 6: a message that reaches the consume callback while the bridge
// begins to stop is either waited for or handed back, never left held.
func TestStopRaceWithHandle(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(nil)
	tok := subjects.Token("late")
	pn := subjects.Partition(tok, b.opts.Partitions)
	m := &stallMsg{subject: fmt.Sprintf("ws.out.send.%d.%s", pn, tok), entered: make(chan struct{}), release: make(chan struct{})}
	var pt *part
	for _, p := range b.ownedParts() {
		if p.n == pn {
			pt = p
		}
	}
	if pt == nil {
		t.Fatalf("partition %d of %q not owned (owned %v)", pn, tok, b.Owned())
	}
	go pt.handle(m)
	<-m.entered
	stopped := make(chan error, 1)
	go func() { stopped <- b.Stop(context.Background()) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("stop did not return")
	}
	close(m.release)
	waitFor(t, "the message handed back", 10*time.Second, func() bool { return m.naks.Load() == 1 })
	if b.heldCount() != 0 || m.acks.Load() != 0 {
		t.Errorf("held %d, acks %d after stop; want the message NAKed only", b.heldCount(), m.acks.Load())
	}
}
