package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Gateway is the emulated API Gateway WebSocket API: serve Handler (or call
// Run or Serve) and Close it when done.
type Gateway struct {
	opts    Options
	log     *slog.Logger
	handler http.Handler // clients, pushes and the fallback on one listener
	// clientHandler and pushHandler split handler when pushes have a
	// listener of their own.
	clientHandler, pushHandler http.Handler
	epoch                      time.Time // idle bookkeeping is relative to it, so it is monotonic
	m                          *gwMetrics
	edge                       *edge // nil: the emulator, not an edge instance

	mu     sync.Mutex
	closed bool
	conns  map[string]*conn
	perIP  map[string]int // connections and upgrades per client IP
	wg     sync.WaitGroup // upgrades and connections in flight

	slots atomic.Int64 // upgrades in progress plus open connections
	wheel *wheel       // idle timeouts and pings (wheel.go)
	stats counters

	// retries holds what NATS must take and could not at once: ends of
	// connections, dead letters (retry.go).
	retries     *retryQueue
	queuedBytes atomic.Int64  // in every connection's send queue
	dropped     atomic.Uint64 // frames taken and never written, numbered

	// writes is what this instance's recent writes say about JetStream
	// taking them (writes.go), part of /readyz.
	writes writeHealth
	// inLimitLog spaces the log lines of clients closed for their
	// inbound rate (inbound.go).
	inLimitLog rate.Sometimes

	// Resumable sessions (session.go): those this instance holds, by
	// connection id, and what it remembers of those it no longer holds.
	smu           sync.Mutex
	sessions      map[string]*session
	tombs         map[string]tomb
	sessBytes     atomic.Int64 // kept by every session
	sessLive      atomic.Int64
	sessSuspended atomic.Int64

	janitorOnce sync.Once
	closeOnce   sync.Once
	closeErr    error
	done        chan struct{}
}

// New checks the options and returns a gateway ready to serve.
func New(opts Options) (*Gateway, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	g := &Gateway{
		opts:  opts,
		log:   opts.Logger.With("component", "gateway"),
		epoch: time.Now(),
		conns: make(map[string]*conn),
		perIP: make(map[string]int),
		done:  make(chan struct{}),

		sessions: make(map[string]*session),
		tombs:    make(map[string]tomb),
	}
	g.inLimitLog.Interval = inLimitLogEvery
	g.retries = newRetryQueue(g)
	g.m = newMetrics(g)
	g.wheel = newWheel(g, g.m.pingLate.Observe, g.m.lockHold.Observe)
	if opts.NATS != nil {
		e, err := newEdge(g)
		if err != nil {
			return nil, err
		}
		g.edge = e
	}
	fallback := opts.Fallback
	if fallback == nil {
		fallback = http.NotFoundHandler()
	}
	mux := http.NewServeMux()
	mux.HandleFunc(opts.WSPath, g.serveWS)
	mux.HandleFunc(opts.PushPath, g.servePush)
	mux.HandleFunc(clientJSPath, g.serveClientJS)
	mux.Handle("/", fallback)
	g.handler = mux
	clients := http.NewServeMux()
	clients.HandleFunc(opts.WSPath, g.serveWS)
	clients.HandleFunc(clientJSPath, g.serveClientJS)
	clients.Handle("/", fallback)
	g.clientHandler = clients
	push := http.NewServeMux()
	push.HandleFunc(opts.PushPath, g.servePush)
	g.pushHandler = push
	return g, nil
}

// Options returns the options in effect, defaults filled in.
func (g *Gateway) Options() Options { return g.opts }

// Handler serves WSPath, PushPath and, for every other path, the Fallback.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Run binds Options.Addr (and PushAddr and HTTPAddr when set) and serves
// until ctx is done or Close is called, then shuts down.
func (g *Gateway) Run(ctx context.Context) error {
	ls, err := Listen(ctx, g.opts)
	if err != nil {
		return err
	}
	return g.ServeAll(ctx, ls)
}

// Serve serves clients and pushes on ln until ctx is done or Close is
// called, then closes every connection and the listener.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	return g.ServeAll(ctx, &Listeners{WS: ln})
}

// Close rejects new connections, closes every open one with 1001 and waits
// for them, at most ShutdownTimeout. An edge instance announces each with
// reason shutdown and then withdraws its instance record; the emulator
// invokes cleanup for each, as when a client leaves. What NATS has not
// taken yet (ends of connections, dead letters) gets the rest of
// ShutdownTimeout. It is idempotent; later calls return the first result.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		deadline := time.Now().Add(g.opts.ShutdownTimeout)
		g.mu.Lock()
		g.closed = true
		open := make([]*conn, 0, len(g.conns))
		for _, c := range g.conns {
			if c.sess == nil {
				// A session is suspended instead, for its client to
				// resume at another instance.
				c.announce.CompareAndSwap(nil, &announceShutdown)
			}
			open = append(open, c)
		}
		g.mu.Unlock()
		close(g.done)
		if g.edge != nil {
			defer g.edge.stop()
		}

		for _, c := range open {
			go func() {
				// One still being upgraded is closed once it is (or by
				// serveWS itself, whichever comes first).
				if ws, _ := c.accepted(context.Background()); ws != nil {
					c.close(statusGoingAway, "gateway shutting down", discShutdown)
				}
			}()
		}
		waited := make(chan struct{})
		go func() { g.wg.Wait(); close(waited) }()
		t := time.NewTimer(g.opts.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-waited:
		case <-t.C:
			g.closeErr = fmt.Errorf("gateway: %d connections still closing after %v", g.slots.Load(), g.opts.ShutdownTimeout)
		}
		// Suspended sessions wait for their clients to resume elsewhere
		// (or the window to pass): the push address and the instance
		// record stay meanwhile, and the rest of the shutdown gets its
		// own ShutdownTimeout after.
		if waitedFrom := time.Now(); g.sessSuspended.Load() > 0 {
			g.drainSessions(waitedFrom)
			deadline = time.Now().Add(g.opts.ShutdownTimeout)
		}
		// Before the edge withdraws its record: while it is there, no
		// other instance sweeps these connections.
		g.retries.drain(deadline)
	})
	return g.closeErr
}

// enter registers an upgrade in flight unless the gateway is closed, so
// Close waits for it.
func (g *Gateway) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// add makes a connection reachable by pushes, unless the gateway is
// closed.
func (g *Gateway) add(c *conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.conns[c.id] = c
	return true
}

// remove makes a connection unreachable; it reports whether it was there.
func (g *Gateway) remove(c *conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns[c.id] != c {
		return false
	}
	delete(g.conns, c.id)
	return true
}

func (g *Gateway) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

func (g *Gateway) lookup(id string) *conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.conns[id]
}

// ConnectionIDs returns the secConnectionIDs of the open connections.
func (g *Gateway) ConnectionIDs() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	ids := make([]string, 0, len(g.conns))
	for id, c := range g.conns {
		if c.isReady() && c.ws != nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// reply is the JSON body of every answer the gateway writes itself.
type reply struct {
	ErrNo  int    `json:"errNo"`
	ErrMsg string `json:"errMsg"`
}

func writeReply(w http.ResponseWriter, status, errNo int, msg string) {
	body, _ := json.Marshal(reply{ErrNo: errNo, ErrMsg: msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
