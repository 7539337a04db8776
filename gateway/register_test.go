package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
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

// stallProxy forwards TCP connections to a NATS server until a client
// sends trigger: from then on nothing more of that connection reaches the
// server (its requests go unanswered, as when NATS stalls), until cut
// closes it, dropping what was held; connections after that are forwarded
// again.
type stallProxy struct {
	ln      net.Listener
	target  string
	trigger []byte

	mu      sync.Mutex
	stalled net.Conn      // the client side of the stalled connection
	hit     chan struct{} // closed when trigger was seen
	once    sync.Once
}

func newStallProxy(t *testing.T, target, trigger string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, trigger: []byte(trigger), hit: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
	return p
}

func (p *stallProxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	defer s.Close()
	defer c.Close()
	go func() { _, _ = io.Copy(c, s) }()
	buf := make([]byte, 32<<10)
	var tail []byte // the end of the previous read, for a trigger cut in two
	for {
		n, err := c.Read(buf)
		if n > 0 {
			seen := append(tail, buf[:n]...)
			if i := bytes.Index(seen, p.trigger); i >= 0 && p.stall(c) {
				// Forward what came before the trigger, hold the rest.
				if before := i - len(tail); before > 0 {
					_, _ = s.Write(buf[:before])
				}
				_, _ = io.Copy(io.Discard, c) // until cut
				return
			}
			if _, err := s.Write(buf[:n]); err != nil {
				return
			}
			tail = append(tail[:0], seen[max(len(seen)-len(p.trigger), 0):]...)
		}
		if err != nil {
			return
		}
	}
}

// stall makes c the stalled connection, once.
func (p *stallProxy) stall(c net.Conn) bool {
	first := false
	p.once.Do(func() {
		p.mu.Lock()
		p.stalled = c
		p.mu.Unlock()
		close(p.hit)
		first = true
	})
	return first
}

// cut closes the stalled connection, dropping what it held.
func (p *stallProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled != nil {
		p.stalled.Close()
	}
}

func (p *stallProxy) url() string { return "nats://" + p.ln.Addr().String() }

// TestRegisterFailedByNATS is the attack of a register that NATS fails
// after the registry record was written: the record is stored, then NATS
// stalls, so the connect event is never stored and the record cannot be
// deleted in the invocation's time. The client was answered 403, as if the
// register function had refused it, and the record stayed for the
// registry's TTL (24 h). It is the server's fault: the client gets 503;
// and the gateway removes the record once NATS takes it.
func TestRegisterFailedByNATS(t *testing.T) {
	s := natstest.Start(t)
	direct, js, names := provisioned(t, s)
	proxy := newStallProxy(t, s.Addr().String(), "PUB "+strings.TrimSuffix(names.InboundKind(subjects.KindConnect), "*"))
	nc, err := nats.Connect(proxy.url(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	fo := functions.DefaultOptions()
	fo.Logger = slog.New(slog.DiscardHandler) // its warnings are the expected outcome here
	fns, err := functions.New(fo, nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fns.Close)
	reg := fns.Invoker(functions.RoleRegister)
	srv := serveAll(t, func(o *Options) {
		o.Register, o.Transfer, o.Cleanup = reg, fns.Invoker(functions.RoleTransfer), fns.Invoker(functions.RoleCleanup)
		o.FunctionTimeout = time.Second
	})
	kv, err := js.KeyValue(context.Background(), names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	watch, err := kv.WatchAll(context.Background(), jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws://"+srv.ws+"/ws", nil)
	if err == nil {
		t.Fatal("the upgrade succeeded with NATS stalled")
	}
	select {
	case <-proxy.hit:
	default:
		t.Fatalf("the connect event was never published: %v", err)
	}
	var token string
	select {
	case e := <-watch.Updates():
		if e == nil || e.Operation() != jetstream.KeyValuePut {
			t.Fatalf("first registry update %v, want the record's put", e)
		}
		token = e.Key()
	case <-ctx.Done():
		t.Fatal("no registry record was written")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Errorf("a register NATS failed answered %d, want 503", code)
	}
	// NATS is back (the stalled connection is dropped and the functions
	// reconnect): the record goes, and its deletion is announced once.
	discs := disconnects(t, direct, names)
	proxy.cut()
	deadline := time.After(waitTimeout)
	for {
		_, err := kv.Get(context.Background(), token)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("the record of the failed register is still there after %v (err %v)", waitTimeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	select {
	case m := <-discs:
		if p, err := names.Parse(m.Subject); err != nil || p.Token != token {
			t.Errorf("disconnect event on %s, want the failed register's token %s", m.Subject, token)
		}
	case <-time.After(waitTimeout):
		t.Error("the deleted record's disconnect was not announced")
	}
}
