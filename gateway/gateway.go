package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Gateway is the emulated API Gateway WebSocket API: serve Handler (or call
// Run or Serve) and Close it when done.
type Gateway struct {
	opts    Options
	log     *slog.Logger
	handler http.Handler
	epoch   time.Time // idle bookkeeping is relative to it, so it is monotonic

	mu     sync.Mutex
	closed bool
	conns  map[string]*conn
	wg     sync.WaitGroup // upgrades and connections in flight

	slots atomic.Int64 // upgrades in progress plus open connections
	stats counters

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
		done:  make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc(opts.WSPath, g.serveWS)
	mux.HandleFunc(opts.PushPath, g.servePush)
	fallback := opts.Fallback
	if fallback == nil {
		fallback = http.NotFoundHandler()
	}
	mux.Handle("/", fallback)
	g.handler = mux
	return g, nil
}

// Options returns the options in effect, defaults filled in.
func (g *Gateway) Options() Options { return g.opts }

// Handler serves WSPath, PushPath and, for every other path, the Fallback.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Run listens on Options.Addr and serves until ctx is done or Close is
// called, then shuts down.
func (g *Gateway) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", g.opts.Addr)
	if err != nil {
		return fmt.Errorf("gateway: listen %s: %w", g.opts.Addr, err)
	}
	return g.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done or Close is called, then closes
// every connection (cleanup is invoked for each) and the listener.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	g.log.Info("gateway listening", "addr", ln.Addr().String(), "ws", g.opts.WSPath, "push", g.opts.PushPath)

	var serveErr error
	select {
	case <-ctx.Done():
	case <-g.done:
	case serveErr = <-errc:
	}
	closeErr := g.Close()
	// Shutdown does not wait for hijacked WebSocket connections; Close did.
	// What is left are push requests, which answer at once now that every
	// connection is gone, and keep-alive connections a push client opened
	// but never used: net/http waits up to 5s for those, so the wait is
	// bounded shorter and the rest closed.
	sctx, cancel := context.WithTimeout(context.Background(), min(g.opts.ShutdownTimeout, time.Second))
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve: %w", serveErr)
	}
	return closeErr
}

// Close rejects new connections, closes every open one with 1001 (cleanup is
// invoked for each, as when a client leaves) and waits for them, at most
// ShutdownTimeout. It is idempotent; later calls return the first result.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		g.closed = true
		open := make([]*conn, 0, len(g.conns))
		for _, c := range g.conns {
			open = append(open, c)
		}
		g.mu.Unlock()
		close(g.done)

		for _, c := range open {
			go func() {
				// One still being upgraded is closed once it is (or by
				// serveWS itself, whichever comes first).
				if ws, _ := c.accepted(context.Background()); ws != nil {
					c.close(statusGoingAway, "gateway shutting down")
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
