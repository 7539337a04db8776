package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// provisioned connects to s and provisions wsbridge's streams and buckets
// under the prefix ws.
func provisioned(t *testing.T, s *server.Server, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, subjects.Names) {
	t.Helper()
	nc := natstest.Connect(t, s, opts...)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew("ws")
	if err := subjects.Provision(context.Background(), js, names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return nc, js, names
}

// disconnects subscribes to every disconnect event, for the test's life.
func disconnects(t *testing.T, nc *nats.Conn, names subjects.Names) <-chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(names.InboundKind(subjects.KindDisconnect), ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

// TestEdgeStartSweepsEarlierLife: an instance restarting under its old id
// (a host that rebooted) announces the records its earlier life left as
// lost, once each, and so, once they stay away past its grace period, those
// of instances that vanished while none ran; records of live instances and
// of API Gateway stay.
func TestEdgeStartSweepsEarlierLife(t *testing.T) {
	s := natstest.Start(t)
	nc, js, names := provisioned(t, s)
	ctx := context.Background()
	reg, _ := js.KeyValue(ctx, names.Bucket())
	inst, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// edge-y lives: it refreshes its record, as an instance does.
	if _, err := inst.Put(ctx, "edge-y", []byte(`{"id":"edge-y","pushUrl":"http://127.0.0.1:1/push"}`)); err != nil {
		t.Fatal(err)
	}
	quit := make(chan struct{})
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		for {
			select {
			case <-quit:
				return
			case <-time.After(200 * time.Millisecond):
				_, _ = inst.Put(ctx, "edge-y", []byte(`{"id":"edge-y","pushUrl":"http://127.0.0.1:1/push"}`))
			}
		}
	}()
	defer func() { close(quit); <-refreshed }()
	// edge-x restarted with records of its earlier life; edge-z vanished.
	// Its earlier life's own record may still be there too.
	if _, err := inst.Put(ctx, "edge-x", []byte(`{"id":"edge-x","pushUrl":"http://127.0.0.1:1/push"}`)); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	for _, who := range []string{"edge-x", "edge-y", "edge-z"} {
		tokens[who] = subjects.Token(subjects.NewEdgeConnID(who))
	}
	tokens["apigw"] = subjects.Token("L5bZ4yiH7c2a+/==")
	for _, tok := range tokens {
		if _, err := reg.Put(ctx, tok, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	discs := disconnects(t, nc, names)

	serveAll(t, func(o *Options) { o.NATS, o.InstanceID, o.PushURL = nc, "edge-x", "http://127.0.0.1:1/push" })

	got := map[string]string{}
	for len(got) < 2 {
		select {
		case m := <-discs:
			var d subjects.DisconnectEvent
			_ = json.Unmarshal(m.Data, &d)
			got[d.Token] = d.Reason
			if want := subjects.DisconnectMsgID(d.Token); m.Header.Get(subjects.HeaderMsgID) != want {
				t.Errorf("Nats-Msg-Id %q, want %q", m.Header.Get(subjects.HeaderMsgID), want)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("disconnect events %v, want lost for edge-x's and edge-z's records", got)
		}
	}
	for _, who := range []string{"edge-x", "edge-z"} {
		if got[tokens[who]] != subjects.ReasonLost {
			t.Errorf("%s's record: %q, want lost", who, got[tokens[who]])
		}
		if _, err := reg.Get(ctx, tokens[who]); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("%s's record: %v, want deleted", who, err)
		}
	}
	for _, who := range []string{"edge-y", "apigw"} {
		if _, err := reg.Get(ctx, tokens[who]); err != nil {
			t.Errorf("%s's record: %v, want kept", who, err)
		}
	}
	// Then this life advertises itself.
	waitFor(t, "edge-x to advertise this life", func() bool {
		e, err := inst.Get(ctx, "edge-x")
		var rec subjects.Instance
		return err == nil && json.Unmarshal(e.Value(), &rec) == nil && !rec.StartedAt.IsZero()
	})
}

// TestEdgeSweepsInstanceBornAfterIt: an instance that advertises itself
// after this one started and dies before this one's grace period is over
// is still noticed, and its connections announced lost. (This one used to
// know only the instances live at its start: whichever of two instances
// started second never swept the first.)
func TestEdgeSweepsInstanceBornAfterIt(t *testing.T) {
	s := natstest.Start(t)
	nc, js, names := provisioned(t, s)
	ctx := context.Background()
	discs := disconnects(t, nc, names)
	startEdge(t, s.ClientURL(), "edge-b") // instance TTL 1s: a grace period of 2s
	var inst jetstream.KeyValue
	waitFor(t, "edge-b to advertise itself", func() bool {
		var err error
		if inst, err = js.KeyValue(ctx, names.GatewayBucket()); err != nil {
			return false
		}
		_, err = inst.Get(ctx, "edge-b")
		return err == nil
	})
	reg, _ := js.KeyValue(ctx, names.Bucket())
	token := subjects.Token(subjects.NewEdgeConnID("edge-late"))
	// edge-late advertises itself once, holding one connection, and dies
	// (stops refreshing, as a SIGKILLed instance does): its record ages
	// out after the TTL, before edge-b's grace period is over.
	if _, err := inst.Put(ctx, "edge-late", []byte(`{"id":"edge-late","pushUrl":"http://127.0.0.1:1/push"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Put(ctx, token, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-discs:
		var d subjects.DisconnectEvent
		_ = json.Unmarshal(m.Data, &d)
		if d.Token != token || d.Reason != subjects.ReasonLost {
			t.Errorf("disconnect %+v, want %s lost", d, token)
		}
	case <-time.After(waitTimeout):
		t.Fatal("edge-late's connection was never announced lost")
	}
	waitFor(t, "edge-late's record to go", func() bool {
		_, err := reg.Get(ctx, token)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
}

// TestReadyz: ready while NATS is connected and the functions answer; not
// once NATS is gone; /healthz regardless.
func TestReadyz(t *testing.T) {
	s := natstest.Start(t)
	nc, _, _ := provisioned(t, s, nats.MaxReconnects(-1))
	var fnDown atomic.Bool
	srv := serveAll(t, func(o *Options) {
		o.NATS, o.InstanceID, o.PushURL = nc, "edge-r", "http://127.0.0.1:1/push"
		o.Ready = func(context.Context) error {
			if fnDown.Load() {
				return errors.New("function not answering")
			}
			return nil
		}
	})
	status := func(path string) int {
		resp, err := http.Get("http://" + srv.ops + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor(t, "ready", func() bool { return status("/readyz") == http.StatusOK })
	fnDown.Store(true)
	if got := status("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz with a function down = %d, want 503", got)
	}
	fnDown.Store(false)
	s.Shutdown()
	waitFor(t, "not ready without NATS", func() bool { return status("/readyz") == http.StatusServiceUnavailable })
	if got := status("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", got)
	}
	if !strings.Contains(metricsText(t, srv.ops), "wsbridge_gateway_nats_connected 0") {
		t.Error("nats_connected is not 0 without NATS")
	}
}

// startEdge serves an edge instance on its own NATS connection to s.
func startEdge(t *testing.T, url, id string) (*served, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var logs bytes.Buffer
	var mu sync.Mutex
	srv := serveAll(t, func(o *Options) {
		o.NATS, o.InstanceID, o.PushURL, o.InstanceTTL = nc, id, "http://127.0.0.1:1/push", time.Second
		o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("%s log:\n%s", id, logs.String())
			mu.Unlock()
		}
	})
	return srv, nc
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestEdgeSurvivesNATSOutage: an outage longer than the instance TTL ages
// every instance record out; once NATS is back no instance may take the
// others for dead, so no connection is announced lost and none is closed.
func TestEdgeSurvivesNATSOutage(t *testing.T) {
	var opts *server.Options
	s := natstest.Start(t, func(o *server.Options) { opts = o })
	url := s.ClientURL()
	nc := natstest.Connect(t, s, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, _ := jetstream.New(nc)
	names := subjects.MustNew("ws")
	if err := subjects.Provision(context.Background(), js, names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	a, _ := startEdge(t, url, "edge-a")
	b, _ := startEdge(t, url, "edge-b")
	var clients []*websocket.Conn
	for _, srv := range []*served{a, b} {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		c, _, err := websocket.Dial(ctx, "ws://"+srv.ws+"/ws", nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		go func() { _, _, _ = c.Read(context.Background()) }() // answers pings and closes
		clients = append(clients, c)
	}
	// The fake register function writes no records: write them as the
	// real one does (reconcile looks for them after the outage).
	reg, _ := js.KeyValue(context.Background(), names.Bucket())
	for _, srv := range []*served{a, b} {
		waitFor(t, "the connection accepted", func() bool { return len(srv.g.ConnectionIDs()) == 1 })
		for _, id := range srv.g.ConnectionIDs() {
			if _, err := reg.Put(context.Background(), subjects.Token(id), []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Both instances have seen each other before the outage.
	inst, _ := js.KeyValue(context.Background(), names.GatewayBucket())
	waitFor(t, "both instances advertised", func() bool {
		_, ea := inst.Get(context.Background(), "edge-a")
		_, eb := inst.Get(context.Background(), "edge-b")
		return ea == nil && eb == nil
	})
	time.Sleep(1500 * time.Millisecond) // a few checks of the live set

	opts.Port = s.Addr().(*net.TCPAddr).Port
	s.Shutdown()
	s.WaitForShutdown()
	time.Sleep(2500 * time.Millisecond) // longer than the TTL: every record ages out
	s2, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s2.Start()
	if !s2.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not restart")
	}
	t.Cleanup(func() { s2.Shutdown(); s2.WaitForShutdown() })

	waitFor(t, "the test's connection back", nc.IsConnected)
	discs := disconnects(t, nc, names)
	waitFor(t, "both instances advertised again", func() bool {
		_, ea := inst.Get(context.Background(), "edge-a")
		_, eb := inst.Get(context.Background(), "edge-b")
		return ea == nil && eb == nil
	})
	// Several TTLs: every check and reconcile that could misfire has run.
	time.Sleep(5 * time.Second)
	select {
	case m := <-discs:
		t.Fatalf("disconnect event after the outage: %s", m.Data)
	default:
	}
	for i, srv := range []*served{a, b} {
		if n := srv.g.Stats().ConnectionsOpen; n != 1 {
			t.Errorf("instance %d holds %d connections after the outage, want 1", i, n)
		}
		srv.stop() // while NATS is up
	}
}

// TestEdgeReconcileClosesSweptConnections: a connection whose registry
// record was swept (and announced lost by another instance) while this one
// was cut off is closed with 1001, not left unregistered, and its cleanup
// is not invoked (its end was announced). One whose record is there stays,
// and so does one that never had a record: nobody ended it.
func TestEdgeReconcileClosesSweptConnections(t *testing.T) {
	s := natstest.Start(t)
	_, js, names := provisioned(t, s)
	srv, _ := startEdge(t, s.ClientURL(), "edge-a")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	closed := make(chan websocket.StatusCode, 3)
	for range 3 {
		c, _, err := websocket.Dial(ctx, "ws://"+srv.ws+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		go func() { _, _, err := c.Read(context.Background()); closed <- websocket.CloseStatus(err) }()
	}
	var ids []string
	waitFor(t, "three connections", func() bool { ids = srv.g.ConnectionIDs(); return len(ids) == 3 })
	// The fake register function writes no records: write two as the
	// real one does, then take one away.
	reg, _ := js.KeyValue(ctx, names.Bucket())
	for _, id := range ids[:2] {
		if _, err := reg.Put(ctx, subjects.Token(id), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	sweptID := ids[0]
	if err := reg.Delete(ctx, subjects.Token(sweptID)); err != nil {
		t.Fatal(err)
	}
	srv.g.edge.reconcile()
	select {
	case code := <-closed:
		if code != websocket.StatusGoingAway {
			t.Errorf("a client closed with %d, want 1001", code)
		}
	case <-time.After(waitTimeout):
		t.Fatal("no client closed")
	}
	waitFor(t, "two connections left", func() bool { return srv.g.Stats().ConnectionsOpen == 2 })
	if got := srv.g.ConnectionIDs(); len(got) != 2 || !slices.Contains(got, ids[1]) || !slices.Contains(got, ids[2]) {
		t.Errorf("connections left %q, want %q", got, ids[1:])
	}
	if n := srv.fn.cleanups(sweptID); n != 0 {
		t.Errorf("cleanup invoked %d times for the swept connection, want 0 (its end was announced)", n)
	}
	// The connection's goroutine counts its end after the close the client
	// saw, so the counter may trail the close by a moment.
	waitFor(t, "the swept connection counted as lost", func() bool {
		return strings.Contains(metricsText(t, srv.ops), `wsbridge_gateway_disconnects_total{reason="lost"} 1`)
	})
}

// TestPushForAnotherInstance: a push naming another instance's connection
// is misrouted, not gone: 503, so the bridge looks again; one naming this
// instance's unknown connection is 404.
func TestPushForAnotherInstance(t *testing.T) {
	s := natstest.Start(t)
	srv, _ := startEdge(t, s.ClientURL(), "edge-a")
	for _, tc := range []struct {
		id   string
		want int
	}{
		{subjects.NewEdgeConnID("edge-b"), http.StatusServiceUnavailable},
		{subjects.NewEdgeConnID("edge-a"), http.StatusNotFound},
		{"L5bZ4yiH7c2a+/==", http.StatusNotFound},
	} {
		resp, err := http.Post("http://"+srv.push+DefaultPushPath, "application/json", strings.NewReader(pushBody(subjects.ActionDataSend, tc.id, subjects.DataText, "x")))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("push for %q answered %d, want %d", tc.id, resp.StatusCode, tc.want)
		}
		if got := resp.Header.Get(HeaderInstance); got != "edge-a" {
			t.Errorf("push for %q answered by %s %q, want edge-a", tc.id, HeaderInstance, got)
		}
	}
}

// TestEdgeSparesInstanceThatAnswers: an instance whose record aged out but
// which answers at its push address, naming itself, is alive (cut off from
// NATS, say): its connections are not swept. Once what answers there is
// another instance, or nothing, it is gone, and they are announced lost.
func TestEdgeSparesInstanceThatAnswers(t *testing.T) {
	s := natstest.Start(t)
	nc, js, names := provisioned(t, s)
	ctx := context.Background()
	discs := disconnects(t, nc, names)
	var who atomic.Value
	who.Store("edge-c")
	edgeC := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderInstance, who.Load().(string))
		w.WriteHeader(http.StatusMethodNotAllowed)
	}))
	defer edgeC.Close()
	// edge-c is live when edge-b starts, and then stops refreshing.
	inst, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(subjects.Instance{ID: "edge-c", PushURL: edgeC.URL + DefaultPushPath})
	if _, err := inst.Put(ctx, "edge-c", rec); err != nil {
		t.Fatal(err)
	}
	reg, _ := js.KeyValue(ctx, names.Bucket())
	token := subjects.Token(subjects.NewEdgeConnID("edge-c"))
	if _, err := reg.Put(ctx, token, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	_, logs := serveEdgeAt(t, s.ClientURL(), "edge-b")
	waitFor(t, "edge-c's record to age out", func() bool {
		_, err := inst.Get(ctx, "edge-c")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	waitFor(t, "edge-b to find edge-c alive", func() bool { return logs.has("no record but answers") })
	select {
	case m := <-discs:
		t.Fatalf("disconnect while edge-c answers: %s", m.Data)
	default:
	}
	if _, err := reg.Get(ctx, token); err != nil {
		t.Fatalf("edge-c's connection record: %v, want kept", err)
	}

	who.Store("edge-d") // another instance at edge-c's address
	select {
	case m := <-discs:
		var d subjects.DisconnectEvent
		_ = json.Unmarshal(m.Data, &d)
		if d.Token != token || d.Reason != subjects.ReasonLost {
			t.Errorf("disconnect %+v, want %s lost", d, token)
		}
	case <-time.After(waitTimeout):
		t.Fatal("edge-c's connection was never announced lost")
	}
}

// TestInstanceIDOfAnEarlierLifeElsewhere: a record of this instance's id
// naming another push URL (an earlier life on another address) that is not
// refreshed does not stop the instance: it waits the record out and
// advertises itself. (A refreshed one, a live duplicate, is refused:
// test/edge TestDuplicateInstanceID, with the real binary.)
func TestInstanceIDOfAnEarlierLifeElsewhere(t *testing.T) {
	s := natstest.Start(t)
	nc, js, names := provisioned(t, s)
	ctx := context.Background()
	inst, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Put(ctx, "edge-q", []byte(`{"id":"edge-q","pushUrl":"http://127.0.0.1:1/push"}`)); err != nil {
		t.Fatal(err)
	}
	srv := serveAll(t, func(o *Options) { o.NATS, o.InstanceID, o.PushURL = nc, "edge-q", "http://127.0.0.1:2/push" })
	// Clients are served once the instance has claimed its id and
	// advertised itself.
	dctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	c, _, err := websocket.Dial(dctx, "ws://"+srv.ws+"/ws", nil)
	if err != nil {
		t.Fatalf("edge-q did not serve a client: %v", err)
	}
	c.CloseNow()
	e, err := inst.Get(ctx, "edge-q")
	if err != nil {
		t.Fatal(err)
	}
	var rec subjects.Instance
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.PushURL != "http://127.0.0.1:2/push" {
		t.Errorf("edge-q's record %s, want this life's push URL", e.Value())
	}
}
