package bridge

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// stallProxy forwards TCP connections to a NATS server and can hold back
// what the server sends, as a descheduled process on a loaded machine sees
// it: nothing arrives for a while, then everything at once.
type stallProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	stalled chan struct{} // closed: forwarding; open: held back
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, stalled: make(chan struct{})}
	close(p.stalled)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go p.forward(c, s)
		}
	}()
	return p
}

// forward copies server to client, waiting while the proxy is stalled.
func (p *stallProxy) forward(c, s net.Conn) {
	defer c.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.stalled
			p.mu.Unlock()
			<-gate
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) stall(d time.Duration) {
	p.mu.Lock()
	gate := make(chan struct{})
	p.stalled = gate
	p.mu.Unlock()
	time.Sleep(d)
	close(gate)
}

// levelCounter counts the log records whose message starts with prefix,
// by level.
type levelCounter struct {
	prefix string
	mu     *sync.Mutex
	byLvl  map[slog.Level]int
}

func (h levelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h levelCounter) Handle(_ context.Context, r slog.Record) error {
	if !strings.HasPrefix(r.Message, h.prefix) {
		return nil
	}
	h.mu.Lock()
	h.byLvl[r.Level]++
	h.mu.Unlock()
	return nil
}
func (h levelCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h levelCounter) WithGroup(string) slog.Handler      { return h }

func (h levelCounter) count(l slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byLvl[l]
}

// An idle bridge on a loaded machine must not warn each time its
// connection receives nothing for a few seconds. Here the bridge's
// connection receives nothing for 7 s: no warning about reading the
// outbound log, and messages flow afterwards.
func TestStalledPullIsRoutine(t *testing.T) {
	e := newEnv(t, nil)
	e.register("hb")
	proxy := newStallProxy(t, e.s.Addr().String())
	lc := levelCounter{prefix: "outbound log", mu: &sync.Mutex{}, byLvl: map[slog.Level]int{}}
	pnc, err := nats.Connect("nats://"+proxy.ln.Addr().String(), nats.PingInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pnc.Close)
	startBridge(t, Options{PushURL: e.tg.srv.URL}, Deps{Conn: pnc, Logger: slog.New(lc)})
	e.publish(e.names.Send(subjects.Token("hb")), []byte("before the stall"))
	waitFor(t, "a send before the stall", 30*time.Second, func() bool { return len(e.tg.of("hb")) == 1 })
	proxy.stall(7 * time.Second)
	e.publish(e.names.Send(subjects.Token("hb")), []byte("after the stall"))
	waitFor(t, "a send after the stall", 30*time.Second, func() bool { return len(e.tg.of("hb")) == 2 })
	if n := lc.count(slog.LevelWarn) + lc.count(slog.LevelError); n != 0 {
		t.Errorf("%d warnings or errors about reading the log for a stall; want debug only", n)
	}
}
