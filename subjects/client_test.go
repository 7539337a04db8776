package subjects_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// startNATS runs an embedded JetStream server for one test.
func startNATS(t testing.TB) *server.Server {
	return natstest.Start(t)
}

func connect(t testing.TB, s *server.Server) *nats.Conn {
	return natstest.Connect(t, s)
}

func TestProvisionIdempotent(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := subjects.MustNew("ws")
	for i := 0; i < 3; i++ {
		if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{}); err != nil {
			t.Fatalf("Provision #%d: %v", i, err)
		}
	}
	// A changed option updates in place.
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{InMaxAge: time.Hour}); err != nil {
		t.Fatalf("Provision with new max age: %v", err)
	}
	want := map[string]struct {
		subject   string
		retention jetstream.RetentionPolicy
	}{
		"WS_IN":  {"ws.in.>", jetstream.LimitsPolicy},
		"WS_OUT": {"ws.out.* ws.out.*.* ws.out.*.*.*.>", jetstream.LimitsPolicy},
		"WS_DLQ": {"ws.dlq.>", jetstream.LimitsPolicy},
	}
	for name, w := range want {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		cfg := st.CachedInfo().Config
		if strings.Join(cfg.Subjects, " ") != w.subject || cfg.Retention != w.retention {
			t.Errorf("stream %s: subjects %v retention %v; want [%s] %v", name, cfg.Subjects, cfg.Retention, w.subject, w.retention)
		}
		if name == "WS_IN" && cfg.MaxAge != time.Hour {
			t.Errorf("WS_IN max age %v after update, want 1h", cfg.MaxAge)
		}
	}
	kv, err := js.KeyValue(ctx, "WS_CONNS")
	if err != nil {
		t.Fatalf("bucket: %v", err)
	}
	st, _ := kv.Status(ctx)
	if st.TTL() != 24*time.Hour {
		t.Errorf("bucket TTL %v, want 24h", st.TTL())
	}
}

func TestClientSendsAreStored(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := subjects.NewClient(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := subjects.Provision(ctx, c.JetStream(), c.Names(), subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	tok := subjects.Token("kGcK4x/+Vf1e7aT3Nd2u1A==")
	steps := []struct {
		name    string
		do      func() error
		subject string
		data    string
		header  map[string]string
	}{
		{"text", func() error { return c.SendText(ctx, tok, "hi") }, "ws.out.send." + tok, "hi", nil},
		{"binary", func() error { return c.SendBinary(ctx, tok, []byte{0, 1}) }, "ws.out.send." + tok, "\x00\x01", map[string]string{"Ws-Data-Type": "binary"}},
		{"close", func() error { return c.Close(ctx, tok) }, "ws.out.close." + tok, "", nil},
		{"broadcast", func() error { return c.Broadcast(ctx, []byte("all"), subjects.Exclude("a", "b")) }, "ws.out.broadcast", "all", map[string]string{"Ws-Exclude": "a,b"}},
		{"group", func() error { return c.SendGroup(ctx, "room1", []byte("g")) }, "ws.out.group.room1", "g", nil},
		{"user", func() error { return c.SendUser(ctx, "alice", []byte("u"), subjects.MsgID("m1")) }, "ws.out.user.alice", "u", map[string]string{"Nats-Msg-Id": "m1"}},
	}
	st, _ := c.JetStream().Stream(ctx, "WS_OUT")
	for i, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		m, err := st.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatalf("%s: stored message: %v", step.name, err)
		}
		// The stream stores the partitioned form; the published subject
		// is what ParseStored gives back.
		stored, _ := c.Names().ParseStored(m.Subject)
		if stored.Original != step.subject || string(m.Data) != step.data {
			t.Errorf("%s: stored %q (published as %q) %q, want %q %q", step.name, m.Subject, stored.Original, m.Data, step.subject, step.data)
		}
		for k, v := range step.header {
			if got := m.Header.Get(k); got != v {
				t.Errorf("%s: header %s = %q, want %q", step.name, k, got, v)
			}
		}
	}
	// Bad input is refused before anything is published.
	for name, err := range map[string]error{
		"bad token": c.SendText(ctx, "a+b", "x"),
		"bad group": c.SendGroup(ctx, "a.b", nil),
		"bad user":  c.SendUser(ctx, "", nil),
		"bad close": c.Close(ctx, ""),
		// Issue 7: a token past the limit would make a subject the server
		// refuses by closing the connection; an exclude list past its
		// limit would be dead-lettered.
		"long token":   c.SendText(ctx, strings.Repeat("A", 4000), "x"),
		"long exclude": c.Broadcast(ctx, nil, subjects.Exclude(strings.Repeat("t", subjects.MaxExcludeLen+1))),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if !errors.Is(c.SendText(ctx, "a+b", "x"), subjects.ErrBadToken) {
		t.Error("bad token error is not ErrBadToken")
	}
	info, _ := st.Info(ctx)
	if info.State.Msgs != uint64(len(steps)) {
		t.Errorf("WS_OUT holds %d messages, want %d", info.State.Msgs, len(steps))
	}
}

func TestClientEvents(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _ := subjects.NewClient(nc, "ws")
	if err := subjects.Provision(ctx, c.JetStream(), c.Names(), subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	core := make(chan subjects.Event, 10)
	bad := make(chan string, 10)
	sub, err := c.Subscribe(func(ev subjects.Event) { core <- ev }, func(subj string, err error) { bad <- subj })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	durable := make(chan subjects.Event, 10)
	cc, err := c.Consume(ctx, "svc", func(_ context.Context, ev subjects.Event) error { durable <- ev; return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	id := "kGcK4x/+Vf1e7aT3Nd2u1A=="
	tok := subjects.Token(id)
	js := c.JetStream()
	n := c.Names()
	pub := func(subj string, data string, h nats.Header) {
		t.Helper()
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte(data), Header: h}); err != nil {
			t.Fatal(err)
		}
	}
	pub(n.Connect(tok), `{"connectionId":"`+id+`","token":"`+tok+`","userId":"alice","groups":["g1"]}`, nil)
	pub(n.Message(tok), "\x00\xff", nats.Header{subjects.HeaderDataType: []string{"binary"}})
	pub(n.Disconnect(tok), `{"connectionId":"`+id+`","reason":"client"}`, nil)
	pub(n.Connect(tok), `not json`, nil)

	for _, ch := range []chan subjects.Event{core, durable} {
		var got []subjects.Event
		for len(got) < 3 {
			select {
			case ev := <-ch:
				got = append(got, ev)
			case <-ctx.Done():
				t.Fatalf("got %d events, want 3", len(got))
			}
		}
		if got[0].Kind != subjects.KindConnect || got[0].Connect.UserID != "alice" || got[0].ConnectionID != id {
			t.Errorf("connect event = %+v", got[0])
		}
		if got[1].Kind != subjects.KindMessage || !got[1].Binary || string(got[1].Data) != "\x00\xff" || got[1].Token != tok {
			t.Errorf("message event = %+v", got[1])
		}
		if got[2].Kind != subjects.KindDisconnect || got[2].Disconnect.Reason != subjects.ReasonClient {
			t.Errorf("disconnect event = %+v", got[2])
		}
	}
	select {
	case subj := <-bad:
		if subj != n.Connect(tok) {
			t.Errorf("bad event reported on %q", subj)
		}
	case <-ctx.Done():
		t.Fatal("undecodable event was not reported")
	}
}

// TestRegistryExpiryIsVisible checks that a record reaching the bucket's TTL
// shows up in a watch as a purge, which the bridge turns into a disconnect
// with reason "expired".
func TestRegistryExpiryIsVisible(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := subjects.MustNew("ws")
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{RegistryTTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, n.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := kv.Put(ctx, "YWJj", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case e := <-w.Updates():
			if e != nil && e.Key() == "YWJj" && e.Operation() == jetstream.KeyValuePurge {
				return
			}
		case <-ctx.Done():
			t.Fatal("no purge marker seen for an expired record")
		}
	}
}

// TestConsumeRedeliversAfterError: a failing handler gets the event again
// (after RetryDelay, not in a tight loop), with a context that outlives the
// one Consume was called with.
func TestConsumeRedeliversAfterError(t *testing.T) {
	s := startNATS(t)
	c, _ := subjects.NewClient(connect(t, s), "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := subjects.Provision(ctx, c.JetStream(), c.Names(), subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	setup, setupDone := context.WithCancel(context.Background())
	calls := make(chan time.Time, 10)
	var n atomic.Int32
	cc, err := c.Consume(setup, "retry", func(hctx context.Context, ev subjects.Event) error {
		if hctx.Err() != nil {
			t.Errorf("handler context already done: %v", hctx.Err())
		}
		calls <- time.Now()
		if n.Add(1) == 1 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	setupDone() // the consumer's own context is gone; handlers must not care
	if _, err := c.JetStream().Publish(ctx, c.Names().Message(subjects.Token("c1")), []byte("x")); err != nil {
		t.Fatal(err)
	}
	var first, second time.Time
	for _, at := range []*time.Time{&first, &second} {
		select {
		case *at = <-calls:
		case <-ctx.Done():
			t.Fatalf("event not (re)delivered (first at %v)", first)
		}
	}
	if gap := second.Sub(first); gap < subjects.RetryDelay/2 {
		t.Errorf("redelivered after %v, want about %v", gap, subjects.RetryDelay)
	}
}
