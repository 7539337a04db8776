package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestRouter: an id naming an edge instance goes to the URL it advertises,
// any other to the push URL, or nowhere without one; every push carries the
// token. An instance without a record (never seen, or whose record aged
// out) is reported missing, with the push URL it last advertised: it is
// still tried (Bridge.push decides).
func TestRouter(t *testing.T) {
	s := startNATS(t)
	js, err := jetstream.New(connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew("ws")
	ctx := context.Background()

	var auth []string
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = append(auth, r.Header.Get("Authorization"))
		_, _ = w.Write(okAnswer)
	}))
	defer edge.Close()
	fallback, _ := url.Parse("http://apigw.example/api-x")

	// Before any edge instance ran there is no bucket: the instance is
	// missing, and no address of it is known.
	r := newRouter(js, names, fallback)
	dead := subjects.Token(subjects.NewEdgeConnID("edge-a"))
	if d, o := r.resolve(ctx, dead); o != nil || d.missing == 0 || d.u != nil {
		t.Fatalf("edge id without a bucket: %+v, %+v; want missing, no URL", d, o)
	}

	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(subjects.Instance{ID: "edge-a", PushURL: edge.URL + "/push"})
	if _, err := kv.Put(ctx, "edge-a", rec); err != nil {
		t.Fatal(err)
	}
	r = newRouter(js, names, fallback)
	live := subjects.Token(subjects.NewEdgeConnID("edge-a"))
	d, o := r.resolve(ctx, live)
	if o != nil || d.missing != 0 || d.u.String() != edge.URL+"/push" {
		t.Fatalf("live instance: %+v, %+v; want %s/push", d, o, edge.URL)
	}
	if got := r.lostAfter(); got != 2*time.Minute {
		t.Errorf("grace %v, want two bucket TTLs (2m)", got)
	}
	if d, o := r.resolve(ctx, subjects.Token("L5bZ4yiH7c2a+/==")); o != nil || d.u != fallback {
		t.Errorf("API Gateway id: %+v, %+v; want the push URL", d, o)
	}
	if d, o := r.resolve(ctx, subjects.Token(subjects.NewEdgeConnID("edge-b"))); o != nil || d.missing == 0 || d.u != nil {
		t.Errorf("unknown instance: %+v, %+v; want missing, no URL", d, o)
	}
	if _, o := newRouter(js, names, nil).resolve(ctx, subjects.Token("L5bZ4yiH7c2a+/==")); o == nil || o.Class != Permanent {
		t.Errorf("API Gateway id without a push URL: %+v, want permanent", o)
	}

	p, err := newPusher(http.DefaultClient, "", "tok")
	if err != nil {
		t.Fatal(err)
	}
	if o := p.push(ctx, d.u, []byte(`{}`), nil, 0); o.Class != OK {
		t.Fatalf("push: %+v", o)
	}
	if len(auth) != 1 || auth[0] != "Bearer tok" {
		t.Errorf("Authorization %q, want Bearer tok", auth)
	}

	// Its record gone, the instance is missing once the cached route
	// expires, and its last address is still known.
	if err := kv.Delete(ctx, "edge-a"); err != nil {
		t.Fatal(err)
	}
	expire := func() {
		r.mu.Lock()
		r.insts["edge-a"].checked = time.Now().Add(-routeCacheTTL)
		r.mu.Unlock()
	}
	expire()
	gone, o := r.resolve(ctx, live)
	if o != nil || gone.missing == 0 || gone.u.String() != edge.URL+"/push" {
		t.Errorf("instance whose record is gone: %+v, %+v; want missing, with its last push URL", gone, o)
	}
	// Back, it is no longer missing.
	if _, err := kv.Put(ctx, "edge-a", rec); err != nil {
		t.Fatal(err)
	}
	expire()
	if d, o := r.resolve(ctx, live); o != nil || d.missing != 0 || d.u.String() != edge.URL+"/push" {
		t.Errorf("instance whose record is back: %+v, %+v; want its push URL", d, o)
	}
}

// TestInstanceWithoutRecord: an edge instance whose record aged out (it
// could not refresh it: NATS away, its bucket electing a leader) but which
// answers at its last push address keeps getting its pushes; its
// connections are not taken for lost. Once it does not answer either, a
// connection whose registry record a survivor swept is gone at once, and
// one still registered is announced lost (once) when the record has been
// missing for the grace, two bucket TTLs.
func TestInstanceWithoutRecord(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	var mu sync.Mutex
	var got []string
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b subjects.PushBody
		_ = json.NewDecoder(r.Body).Decode(&b)
		mu.Lock()
		got = append(got, b.WebSocket.Data)
		mu.Unlock()
		_, _ = w.Write(okAnswer)
	}))
	defer inst.Close()
	received := func(data string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(got, data)
	}
	kv, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: e.names.GatewayBucket(), TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(subjects.Instance{ID: "edge-a", PushURL: inst.URL + "/push"})
	if _, err := kv.Put(ctx, "edge-a", rec); err != nil {
		t.Fatal(err)
	}
	kept, swept := subjects.NewEdgeConnID("edge-a"), subjects.NewEdgeConnID("edge-a")
	e.register(kept, swept)
	discs := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	e.start(func(o *Options) {
		o.MaxAttempts, o.BackoffBase, o.BackoffMax = 1000, 20*time.Millisecond, 200*time.Millisecond
	})

	e.publish(e.names.Send(subjects.Token(kept)), []byte("one"))
	waitFor(t, "the push while the record is there", 20*time.Second, func() bool { return received("one") })
	waitFor(t, "the record to age out", 20*time.Second, func() bool {
		_, err := kv.Get(ctx, "edge-a")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	// What the bridge read of the record when it pushed "one" is used for
	// routeCacheTTL; past it, it reads again and finds no record.
	time.Sleep(routeCacheTTL)
	e.publish(e.names.Send(subjects.Token(kept)), []byte("two"))
	waitFor(t, "the push to the instance without a record", 20*time.Second, func() bool { return received("two") })

	// Now it does not answer either. A survivor swept one connection.
	inst.Close()
	if err := e.kv().Delete(ctx, subjects.Token(swept)); err != nil {
		t.Fatal(err)
	}
	e.publish(e.names.Send(subjects.Token(swept)), []byte("swept"))
	e.publish(e.names.Send(subjects.Token(kept)), []byte("three"))
	dlq, err := e.js.Stream(ctx, e.names.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{swept, kept} {
		var m *jetstream.RawStreamMsg
		waitFor(t, "the dead letter of "+id, 30*time.Second, func() bool {
			m, err = dlq.GetLastMsgForSubject(ctx, e.names.DeadLetter(subjects.KindSend, subjects.Token(id)))
			return err == nil
		})
		if r := m.Header.Get(subjects.HeaderReason); r != "gone" {
			t.Errorf("dead letter of %s: reason %q, want gone", id, r)
		}
	}
	waitFor(t, "the kept connection announced lost", 20*time.Second, func() bool {
		return len(e.disconnectsOf(discs, subjects.Token(kept))) > 0
	})
	e.flushCollector(discs)
	if r := e.disconnectsOf(discs, subjects.Token(kept)); len(r) != 1 || r[0] != subjects.ReasonLost {
		t.Errorf("disconnects of the kept connection %q, want one lost", r)
	}
	if r := e.disconnectsOf(discs, subjects.Token(swept)); len(r) != 0 {
		t.Errorf("disconnects of the swept connection %q, want none from the bridge (the sweep announced it)", r)
	}
	e.waitRecordGone(t, subjects.Token(kept), "the lost connection")
	// Nothing else was dead-lettered: "one" and "two" were pushed.
	if info, err := dlq.Info(ctx); err != nil || info.State.Msgs != 2 {
		t.Errorf("dead letters: %+v, %v; want two (swept, three)", info, err)
	}
	if m, err := dlq.GetLastMsgForSubject(ctx, e.names.DeadLetter(subjects.KindSend, subjects.Token(kept))); err != nil || string(m.Data) != "three" {
		t.Errorf("dead letter of the kept connection: %v, %v; want three", m, err)
	}
}

// TestPlainPushRefused: with a push token set, an instance advertising a
// plain http:// push URL off this host gets no push (the token would cross
// the network in the clear to whatever the record names): its pushes are
// refused as permanent, saying how to allow it. Loopback, https, no token
// or --allow-plain-push let it through.
func TestPlainPushRefused(t *testing.T) {
	s := startNATS(t)
	js, err := jetstream.New(connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew("ws")
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		url     string
		refused bool // with a token, plain pushes not allowed
	}{
		{"http://10.1.2.3:8082/push", true},
		{"http://edge-a.internal:8082/push", true},
		{"http://127.0.0.1:8082/push", false},
		{"http://[::1]:8082/push", false},
		{"http://localhost:8082/push", false},
		{"https://10.1.2.3:8082/push", false},
	} {
		rec, _ := json.Marshal(subjects.Instance{ID: "edge-a", PushURL: tc.url})
		if _, err := kv.Put(ctx, "edge-a", rec); err != nil {
			t.Fatal(err)
		}
		tok := subjects.Token(subjects.NewEdgeConnID("edge-a"))
		for _, refusing := range []bool{true, false} {
			r := newRouter(js, names, nil)
			r.plainRefused = refusing
			d, o := r.resolve(ctx, tok)
			switch {
			case refusing && tc.refused:
				if o == nil || o.Class != Permanent || !strings.Contains(o.Err.Error(), "--allow-plain-push") {
					t.Errorf("%s with a token: %+v, %+v; want refused (permanent), naming --allow-plain-push", tc.url, d, o)
				}
			case o != nil || d.u == nil || d.u.String() != tc.url:
				t.Errorf("%s (refusing %v): %+v, %+v; want pushed there", tc.url, refusing, d, o)
			}
		}
	}
}

// TestRouterFollowsSessionHolder: a connection whose registry record names
// the instance holding its resumed session (another than the one its id
// names) is pushed there; once the record no longer names one, the id
// decides again.
func TestRouterFollowsSessionHolder(t *testing.T) {
	s := startNATS(t)
	js, err := jetstream.New(connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew("ws")
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"edge-a", "edge-b"} {
		rec, _ := json.Marshal(subjects.Instance{ID: inst, PushURL: "http://" + inst + ".example/push"})
		if _, err := kv.Put(ctx, inst, rec); err != nil {
			t.Fatal(err)
		}
	}
	idx := newIndex()
	r := newRouter(js, names, nil)
	r.holder = idx.holder
	token := subjects.Token(subjects.NewEdgeConnID("edge-a"))
	other := subjects.Token(subjects.NewEdgeConnID("edge-a"))
	idx.put(token, []byte(`{"userId":"u"}`))
	idx.put(other, []byte(`{}`))
	want := func(tok, host string) {
		t.Helper()
		d, o := r.resolve(ctx, tok)
		if o != nil || d.u == nil || d.u.Host != host {
			t.Fatalf("resolve: %+v, %+v; want %s", d, o, host)
		}
	}
	want(token, "edge-a.example")
	idx.put(token, []byte(`{"userId":"u","instance":"edge-b"}`))
	want(token, "edge-b.example")
	want(other, "edge-a.example")
	if got := idx.user("u", nil); len(got) != 1 || got[0] != token {
		t.Errorf("user u: %v; the holder must not disturb what the index keeps", got)
	}
	idx.put(token, []byte(`{"userId":"u"}`))
	want(token, "edge-a.example")
	idx.put(token, []byte(`{"instance":"edge-b"}`))
	idx.remove(token)
	want(token, "edge-a.example")
	if n := idx.nholders.Load(); n != 0 {
		t.Errorf("%d holders left after the record went", n)
	}
}
