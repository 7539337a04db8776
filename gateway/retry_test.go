package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// edgeWithFunctions is an edge instance as `wsbridge gateway` runs one: the
// real functions in process, on the instance's own NATS connection to
// natsURL (through a proxy the test cuts).
type edgeWithFunctions struct {
	*served
	logs *logBuffer
	nc   *nats.Conn
	// stopErr is what ServeAll returned, once stop has returned.
	stopErr error
}

func serveEdgeWithFunctions(t *testing.T, natsURL, id string, tweak func(*Options)) *edgeWithFunctions {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fo := functions.DefaultOptions()
	fo.Logger = log
	fns, err := functions.New(fo, nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fns.Close)
	var ls Listeners
	for _, dst := range []*net.Listener{&ls.WS, &ls.Push, &ls.HTTP} {
		if *dst, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{
		Register: fns.Invoker(functions.RoleRegister), Transfer: fns.Invoker(functions.RoleTransfer),
		Cleanup: fns.Invoker(functions.RoleCleanup), FunctionTimeout: time.Second,
		NATS: nc, InstanceID: id, InstanceTTL: time.Second,
		PushURL: "http://" + ls.Push.Addr().String() + DefaultPushPath,
		Logger:  log,
	}
	if tweak != nil {
		tweak(&o)
	}
	g, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.ServeAll(ctx, &ls) }()
	e := &edgeWithFunctions{logs: logs, nc: nc}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case e.stopErr = <-done:
			case <-time.After(3 * waitTimeout):
				t.Fatalf("%s: ServeAll still running %v after it was told to stop", id, 3*waitTimeout)
			}
		})
	}
	t.Cleanup(stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", id, logs)
		}
	})
	e.served = &served{g: g, stop: stop, ws: ls.WS.Addr().String(), push: ls.Push.Addr().String(), ops: ls.HTTP.Addr().String()}
	return e
}

// dialClients opens n clients to srv and returns them with their tokens
// (registered by the real register function: record and connect event).
func dialClients(t *testing.T, srv *served, n int) ([]*websocket.Conn, []string) {
	t.Helper()
	var clients []*websocket.Conn
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		c, _, err := websocket.Dial(ctx, "ws://"+srv.ws+DefaultWSPath, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.CloseNow() })
		clients = append(clients, c)
	}
	waitFor(t, "every client accepted", func() bool { return len(srv.g.ConnectionIDs()) == n })
	var tokens []string
	for _, id := range srv.g.ConnectionIDs() {
		tokens = append(tokens, subjects.Token(id))
	}
	return clients, tokens
}

// disconnectEvents returns the disconnect events WS_IN holds, by token:
// what every consumer of the stream reads, whoever published them.
func disconnectEvents(t *testing.T, js jetstream.JetStream, names subjects.Names) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	st, err := js.Stream(ctx, names.StreamIn())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(names.InboundKind(subjects.KindDisconnect)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for subj := range info.State.Subjects {
		token := subj[strings.LastIndexByte(subj, '.')+1:]
		c, err := js.OrderedConsumer(ctx, names.StreamIn(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
		if err != nil {
			t.Fatal(err)
		}
		for range info.State.Subjects[subj] {
			m, err := c.Next(jetstream.FetchMaxWait(waitTimeout))
			if err != nil {
				t.Fatalf("disconnect events of %s: %v", token, err)
			}
			var d subjects.DisconnectEvent
			if err := json.Unmarshal(m.Data(), &d); err != nil {
				t.Fatalf("disconnect event %q: %v", m.Data(), err)
			}
			out[token] = append(out[token], d.Reason)
		}
	}
	return out
}

// waitEnds waits until every token has a disconnect event in WS_IN and the
// gateway's retries are done, then checks that each has exactly one, with
// reason want, and no registry record.
func waitEnds(t *testing.T, srv *served, js jetstream.JetStream, names subjects.Names, tokens []string, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * waitTimeout)
	var got map[string][]string
	for {
		got = disconnectEvents(t, js, names)
		missing := 0
		for _, tok := range tokens {
			if len(got[tok]) == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d ended connections have no disconnect event after %v: %v", missing, len(tokens), 3*waitTimeout, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Whatever is still retrying could add a second event: wait it out.
	waitFor(t, "the retries to be done", func() bool {
		return strings.Contains(metricsText(t, srv.ops), `wsbridge_gateway_retries_pending{what="disconnect"} 0`)
	})
	got = disconnectEvents(t, js, names)
	reg, err := js.KeyValue(context.Background(), names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range tokens {
		if r := got[tok]; len(r) != 1 || r[0] != want {
			t.Errorf("connection %s: disconnect events %q, want one, %s", tok, r, want)
		}
		if _, err := reg.Get(context.Background(), tok); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("connection %s: registry record %v, want it deleted", tok, err)
		}
	}
}

// TestDisconnectsRetriedUntilNATSTakesThem: clients that close while NATS
// cannot take their cleanup still get one disconnect event each, once NATS
// is back. (The cleanup failure was logged and the end dropped: 29
// connections of one chaos run had no disconnect event, all near a NATS
// node kill.)
func TestDisconnectsRetriedUntilNATSTakesThem(t *testing.T) {
	t.Run("NATS cut off while clients close", func(t *testing.T) {
		t.Parallel()
		s := natstest.Start(t)
		_, js, names := provisioned(t, s)
		proxy := newCutProxy(t, s.Addr().String())
		edge := serveEdgeWithFunctions(t, proxy.url(), "edge-r", nil)
		const n = 10
		clients, tokens := dialClients(t, edge.served, n)

		// A mass disconnect while NATS takes nothing: every cleanup fails.
		proxy.cut.Store(true)
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() { defer wg.Done(); _ = c.Close(websocket.StatusNormalClosure, "bye") }()
		}
		wg.Wait()
		waitFor(t, "every cleanup to fail", func() bool { return edge.g.Stats().InvokeErrors >= n })
		proxy.heal()
		waitEnds(t, edge.served, js, names, tokens, subjects.ReasonClient)
	})

	t.Run("the event not stored, the record kept", func(t *testing.T) {
		t.Parallel()
		// NATS stalls as the cleanup publishes the disconnect event: it
		// is never stored, and the record stays (the event goes first) for
		// the retry to announce; an instance killed meanwhile leaves it to
		// a survivor's sweep.
		s := natstest.Start(t)
		_, js, names := provisioned(t, s)
		proxy := newStallProxy(t, s.Addr().String(), "PUB "+strings.TrimSuffix(names.InboundKind(subjects.KindDisconnect), "*"))
		edge := serveEdgeWithFunctions(t, proxy.url(), "edge-s", nil)
		clients, tokens := dialClients(t, edge.served, 1)
		_ = clients[0].Close(websocket.StatusNormalClosure, "bye")
		select {
		case <-proxy.hit:
		case <-time.After(waitTimeout):
			t.Fatal("the cleanup never published the disconnect event")
		}
		waitFor(t, "the cleanup to fail", func() bool { return edge.g.Stats().InvokeErrors >= 1 })
		reg, err := js.KeyValue(context.Background(), names.Bucket())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Get(context.Background(), tokens[0]); err != nil {
			t.Fatalf("the record before NATS is back: %v, want it kept until its event is stored", err)
		}
		proxy.cut() // the stalled connection drops; the instance reconnects
		waitEnds(t, edge.served, js, names, tokens, subjects.ReasonClient)
	})

	t.Run("shutdown waits for NATS within its timeout", func(t *testing.T) {
		t.Parallel()
		// SIGTERM while NATS takes nothing: the shutdown announcements
		// fail, and are retried until NATS is back, within
		// ShutdownTimeout.
		s := natstest.Start(t)
		_, js, names := provisioned(t, s)
		proxy := newCutProxy(t, s.Addr().String())
		edge := serveEdgeWithFunctions(t, proxy.url(), "edge-t", func(o *Options) { o.ShutdownTimeout = 3 * waitTimeout })
		clients, tokens := dialClients(t, edge.served, 5)
		for _, c := range clients {
			go func() { _, _, _ = c.Read(context.Background()) }() // answers the 1001
		}
		proxy.cut.Store(true)
		stopped := make(chan struct{})
		go func() { edge.stop(); close(stopped) }()
		deadline := time.After(3 * waitTimeout)
		for !edge.logs.has("disconnect not taken by NATS") {
			select {
			case <-stopped:
				t.Fatalf("stopped before any shutdown announcement failed: %v", edge.stopErr)
			case <-deadline:
				t.Fatal("no shutdown announcement ever failed with NATS cut off")
			case <-time.After(10 * time.Millisecond):
			}
		}
		proxy.heal()
		select {
		case <-stopped:
		case <-time.After(3 * waitTimeout):
			t.Fatal("the gateway never stopped")
		}
		if edge.stopErr != nil {
			t.Errorf("ServeAll: %v", edge.stopErr)
		}
		got := disconnectEvents(t, js, names)
		for _, tok := range tokens {
			if r := got[tok]; len(r) != 1 || r[0] != subjects.ReasonShutdown {
				t.Errorf("connection %s: disconnect events %q, want one, shutdown", tok, r)
			}
		}
	})

	t.Run("shutdown without NATS gives up at its timeout", func(t *testing.T) {
		t.Parallel()
		s := natstest.Start(t)
		provisioned(t, s)
		edge := serveEdgeWithFunctions(t, s.ClientURL(), "edge-u", func(o *Options) { o.ShutdownTimeout = time.Second })
		clients, _ := dialClients(t, edge.served, 3)
		for _, c := range clients {
			go func() { _, _, _ = c.Read(context.Background()) }()
		}
		s.Shutdown()
		waitFor(t, "NATS to be gone", func() bool { return !edge.nc.IsConnected() })
		edge.stop() // bounded: a hang fails in stop
		if edge.stopErr != nil {
			t.Errorf("ServeAll: %v", edge.stopErr)
		}
		if got := testutilValue(t, edge.g, "wsbridge_gateway_retries_dropped_total", `what="disconnect"`, `why="stopped"`); got != 3 {
			t.Errorf("retries_dropped_total{stopped} %v, want the 3 shutdown announcements", got)
		}
	})
}

// testutilValue reads one series of g's metrics: the family name and the
// label pairs its series must have.
func testutilValue(t *testing.T, g *Gateway, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			var pairs []string
			for _, l := range m.GetLabel() {
				pairs = append(pairs, l.GetName()+`="`+l.GetValue()+`"`)
			}
			for _, want := range labels {
				if !strings.Contains(strings.Join(pairs, ","), want) {
					continue series
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s{%s}", name, strings.Join(labels, ","))
	return 0
}
