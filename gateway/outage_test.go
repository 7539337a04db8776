package gateway

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// cutProxy forwards TCP connections to a NATS server until it is cut: then
// it keeps them open but forwards nothing, as a network partition or a
// server busy electing leaders does (the client notices only by timeouts).
// Healing closes the cut connections, so the client reconnects through it.
type cutProxy struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { _ = ln.Close(); p.closeAll() })
	return p
}

func (p *cutProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.cut.Load() {
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// pipe copies src to dst, dropping the bytes while the proxy is cut.
func (p *cutProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.cut.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

func (p *cutProxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// heal lets traffic through again; the cut connections are closed (their
// streams lost bytes), so clients reconnect.
func (p *cutProxy) heal() {
	p.closeAll()
	p.cut.Store(false)
}

// logBuffer keeps an instance's log, to wait for what it says.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.buf.String(), s)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// serveEdgeAt serves an edge instance on its own NATS connection to
// natsURL, advertising the push address it really listens on, with an
// instance TTL of 1s.
func serveEdgeAt(t *testing.T, natsURL, id string) (*served, *logBuffer) {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var ls Listeners
	for _, dst := range []*net.Listener{&ls.WS, &ls.Push, &ls.HTTP} {
		if *dst, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	logs := &logBuffer{}
	fn := &fakeFn{}
	g, err := New(Options{
		Register: fn, Transfer: fn, Cleanup: fn,
		NATS: nc, InstanceID: id, InstanceTTL: time.Second,
		PushURL: "http://" + ls.Push.Addr().String() + DefaultPushPath,
		Logger:  slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.ServeAll(ctx, &ls) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s ServeAll: %v", id, err)
			}
		})
	}
	t.Cleanup(stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", id, logs)
		}
	})
	return &served{g: g, fn: fn, stop: stop, ws: ls.WS.Addr().String(), push: ls.Push.Addr().String(), ops: ls.HTTP.Addr().String()}, logs
}

// TestLiveInstanceSurvivesLapsedRecord: an instance cut off from NATS for
// longer than its TTL (as when the cluster re-elects leaders) loses its
// record but not its clients. A bridge keeps pushing to it, another
// instance finds it alive at its push address and sweeps nothing, and the
// instance itself, back on NATS, closes none of its clients: the client
// stays connected, gets every send, and no disconnect event is published.
// (The bridge used to dead-letter the send as gone and announce the client
// lost, the other instance to sweep it, and the instance then closed it
// with 1001 "connection state lost".)
func TestLiveInstanceSurvivesLapsedRecord(t *testing.T) {
	s := natstest.Start(t)
	nc, js, names := provisioned(t, s)
	ctx := context.Background()
	discs := disconnects(t, nc, names)

	proxy := newCutProxy(t, s.Addr().String())
	a, aLogs := serveEdgeAt(t, proxy.url(), "edge-a")
	_, bLogs := serveEdgeAt(t, s.ClientURL(), "edge-b")
	var inst jetstream.KeyValue
	advertised := func(id string) bool {
		if inst == nil {
			inst, _ = js.KeyValue(ctx, names.GatewayBucket())
		}
		if inst == nil {
			return false
		}
		_, err := inst.Get(ctx, id)
		return err == nil
	}
	waitFor(t, "both instances advertised", func() bool { return advertised("edge-a") && advertised("edge-b") })

	br, err := bridge.New(bridge.Options{
		PushURL: "http://" + a.push + DefaultPushPath, MaxAttempts: 1000,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	}, bridge.Deps{Conn: natstest.Connect(t, s), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := br.Start(startCtx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Stop(context.Background()) })

	dialCtx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	client, _, err := websocket.Dial(dialCtx, "ws://"+a.ws+DefaultWSPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	frames := make(chan string, 16)
	closed := make(chan error, 1)
	go func() {
		for {
			_, data, err := client.Read(context.Background())
			if err != nil {
				closed <- err
				return
			}
			frames <- string(data)
		}
	}()
	var id string
	waitFor(t, "the connection accepted", func() bool {
		ids := a.g.ConnectionIDs()
		if len(ids) == 1 {
			id = ids[0]
		}
		return id != ""
	})
	token := subjects.Token(id)
	// The fake register function writes no record: write it as the real
	// one does.
	reg, err := js.KeyValue(ctx, names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Put(ctx, token, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	send := func(data string) {
		t.Helper()
		if _, err := js.Publish(ctx, names.Send(token), []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	receive := func(want string) {
		t.Helper()
		select {
		case got := <-frames:
			if got != want {
				t.Fatalf("client received %q, want %q", got, want)
			}
		case err := <-closed:
			t.Fatalf("client closed (%v) waiting for %q", err, want)
		case <-time.After(3 * waitTimeout):
			t.Fatalf("client never received %q", want)
		}
	}
	lost := func() string {
		select {
		case m := <-discs:
			return string(m.Data)
		case err := <-closed:
			return "client closed: " + err.Error()
		default:
			return ""
		}
	}
	send("before")
	receive("before")

	// Cut edge-a off from NATS until its record ages out and edge-b,
	// past its grace period, has found it missing twice and asked it.
	proxy.cut.Store(true)
	waitFor(t, "edge-a's record to age out", func() bool { return !advertised("edge-a") })
	deadline := time.Now().Add(3 * waitTimeout)
	for !bLogs.has("no record but answers") {
		if what := lost(); what != "" {
			t.Fatalf("edge-a's client ended while edge-a was cut off: %s", what)
		}
		if time.Now().After(deadline) {
			t.Fatal("edge-b never looked at edge-a's missing record")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Past a bridge's route cache (2s): it reads the bucket again, finds
	// no record, and must still push to edge-a.
	time.Sleep(2 * time.Second)
	send("during")
	receive("during")

	// Back on NATS: edge-a advertises itself again and reconciles its
	// connections with the registry; the client stays.
	proxy.heal()
	waitFor(t, "edge-a advertised again", func() bool { return advertised("edge-a") })
	waitFor(t, "edge-a to reconcile", func() bool { return aLogs.has("connections reconciled") })
	send("after")
	receive("after")

	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if what := lost(); what != "" {
		t.Fatalf("edge-a's client ended: %s", what)
	}
	if _, err := reg.Get(ctx, token); err != nil {
		t.Errorf("the client's registry record: %v, want it kept", err)
	}
	if !aLogs.has("component=gateway checked=1 closed=0") {
		t.Error("edge-a's reconcile closed its client")
	}
	if n := a.g.Stats().ConnectionsOpen; n != 1 {
		t.Errorf("edge-a holds %d connections, want 1", n)
	}
	dlq, err := js.Stream(ctx, names.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	if info, err := dlq.Info(ctx); err != nil || info.State.Msgs != 0 {
		var n uint64
		if info != nil {
			n = info.State.Msgs
		}
		t.Errorf("dead letters: %d (%v), want none", n, err)
	}
}
