package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/wsbridge/wsbridge/internal/connlimit"
	"github.com/wsbridge/wsbridge/subjects"
)

// Listeners are the sockets a gateway serves: clients (and, without a Push
// listener, pushes) on WS, pushes on Push, /metrics, /healthz and /readyz
// on HTTP. Push and HTTP may be nil.
type Listeners struct {
	WS, Push, HTTP net.Listener
}

// Close closes every listener.
func (l *Listeners) Close() {
	for _, ln := range []net.Listener{l.WS, l.Push, l.HTTP} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// ListenError says why addr, set by the flag (a name without dashes),
// could not be listened on, and which flag and environment variable choose
// another: every command that listens reports it alike.
func ListenError(flag, addr string, err error) error {
	why := "cannot listen"
	if errors.Is(err, syscall.EADDRINUSE) {
		why = "address already in use (is another wsbridge running?)"
	}
	return fmt.Errorf("--%s %s: %s; choose another with --%s or %s (%w)", flag, addr, why, flag, subjects.EnvName(flag), err)
}

// Listen binds Addr, PushAddr and HTTPAddr (those set) before anything else
// starts, so an address in use fails at once, naming the address and its
// flag. On error nothing stays bound.
func Listen(ctx context.Context, o Options) (*Listeners, error) {
	o = o.withDefaults()
	var ls Listeners
	var lc net.ListenConfig
	for _, a := range []struct {
		flag, addr string
		dst        *net.Listener
	}{{"addr", o.Addr, &ls.WS}, {"push-addr", o.PushAddr, &ls.Push}, {"http-addr", o.HTTPAddr, &ls.HTTP}} {
		if a.addr == "" {
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", a.addr)
		if err != nil {
			ls.Close()
			return nil, fmt.Errorf("gateway: %w", ListenError(a.flag, a.addr, err))
		}
		*a.dst = ln
	}
	return &ls, nil
}

// server returns an http.Server with the read, write, keep-alive and header
// limits of every listener.
func (g *Gateway) server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: g.opts.ReadTimeout,
		ReadTimeout:       g.opts.ReadTimeout,
		WriteTimeout:      2 * g.opts.WriteTimeout,
		IdleTimeout:       g.opts.KeepAliveTimeout,
		MaxHeaderBytes:    g.opts.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
}

// clientServer is server for the client listener, where a connection that
// is not upgraded yet has HandshakeTimeout for its TLS handshake (net/http
// bounds it by ReadHeaderTimeout) and its request headers, and, when
// pushes have a listener of their own, for idling between requests: a
// WebSocket client sends one request.
func (g *Gateway) clientServer(h http.Handler, pushesToo bool) *http.Server {
	srv := g.server(h)
	srv.ReadHeaderTimeout = min(g.opts.HandshakeTimeout, g.opts.ReadTimeout)
	if !pushesToo {
		srv.IdleTimeout = min(g.opts.HandshakeTimeout, g.opts.KeepAliveTimeout)
	}
	return srv
}

// capLogEvery spaces the log lines of a listener at its caps: a flood of
// sockets gets one line per interval, not one per socket.
const capLogEvery = 10 * time.Second

// limit bounds a listener: max connections in all, and
// MaxHTTPConnectionsPerIP not yet upgraded per peer address (exempt ones
// aside). Past either, a connection waiting for a request makes room, so
// idle sockets cannot keep /healthz or /push from answering.
func (g *Gateway) limit(name string, ln net.Listener, max int, exempt func(netip.Addr) bool) *connlimit.Listener {
	every := rate.Sometimes{Interval: capLogEvery}
	return connlimit.New(ln, connlimit.Options{
		Max:     max,
		PerAddr: g.opts.MaxHTTPConnectionsPerIP,
		Exempt:  exempt,
		Refused: func() {
			g.m.listenerRefused.Inc()
			every.Do(func() {
				g.log.Warn("listener at a connection cap: new connections closed at once", "listener", name,
					"max_connections", g.opts.MaxConnections, "max_http_connections", g.opts.MaxHTTPConnections,
					"max_http_connections_per_ip", g.opts.MaxHTTPConnectionsPerIP)
			})
		},
		Evicted: func() { g.m.listenerEvicted.Inc() },
	})
}

// ServeAll serves ls until ctx is done or Close is called, then closes
// every connection (announcing each as shut down when the gateway is an edge
// instance, else invoking cleanup) and the listeners.
func (g *Gateway) ServeAll(ctx context.Context, ls *Listeners) error {
	if ls == nil || ls.WS == nil {
		return errors.New("gateway: no client listener")
	}
	// Before anything is served: the cap every upgrade is checked against.
	if err := g.clampToFiles(); err != nil {
		ls.Close()
		return err
	}
	var tlsConf *tls.Config
	if g.opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(g.opts.TLSCert, g.opts.TLSKey)
		if err != nil {
			ls.Close()
			return fmt.Errorf("gateway: --tls-cert/--tls-key: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	}
	if g.edge != nil {
		// Advertised before the first client is accepted, so a push for
		// any connection this instance hands out finds it.
		if err := g.edge.start(ctx); err != nil {
			ls.Close()
			return err
		}
	}
	type served struct {
		srv *http.Server
		ln  net.Listener
	}
	var all []served
	add := func(srv *http.Server, ln *connlimit.Listener, wrap func(net.Listener) net.Listener) {
		srv.ConnState = ln.ConnState
		all = append(all, served{srv, wrap(ln)})
	}
	same := func(ln net.Listener) net.Listener { return ln }
	// The client listener holds MaxConnections WebSockets beside the
	// others; trusted proxies speak for many clients.
	// Each listener keeps accepting when descriptors run out (fdGuard).
	turnAway := refuseHTTP("too many connections: the gateway is out of file descriptors")
	clients := g.limit("client", g.guardFiles(ls.WS, "client", sparesClient, turnAway), g.opts.MaxConnections+g.opts.MaxHTTPConnections, g.trustedAddr)
	wrapTLS := same
	if tlsConf != nil {
		wrapTLS = func(ln net.Listener) net.Listener { return tls.NewListener(ln, tlsConf) }
	}
	wsHandler := g.handler
	if ls.Push != nil {
		wsHandler = g.clientHandler
		add(g.server(g.pushHandler), g.limit("push", g.guardFiles(ls.Push, "push", sparesPush, turnAway), g.opts.MaxHTTPConnections, nil), same)
	}
	add(g.clientServer(wsHandler, ls.Push == nil), clients, wrapTLS)
	if ls.HTTP != nil {
		add(g.server(g.opsHandler()), g.limit("ops", g.guardFiles(ls.HTTP, "ops", sparesOps, nil), g.opts.MaxHTTPConnections, nil), same)
	}
	errc := make(chan error, len(all))
	for _, s := range all {
		go func() { errc <- s.srv.Serve(s.ln) }()
	}
	attrs := []any{"addr", ls.WS.Addr().String(), "tls", tlsConf != nil}
	if ls.Push != nil {
		attrs = append(attrs, "push_addr", ls.Push.Addr().String())
	}
	if ls.HTTP != nil {
		attrs = append(attrs, "http_addr", ls.HTTP.Addr().String())
	}
	if g.edge != nil {
		attrs = append(attrs, "instance", g.opts.InstanceID)
	}
	g.log.Info("gateway listening", attrs...)

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
	for _, s := range all {
		if err := s.srv.Shutdown(sctx); err != nil {
			_ = s.srv.Close()
		}
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve: %w", serveErr)
	}
	return closeErr
}

// opsHandler serves /metrics, /healthz and /readyz.
func (g *Gateway) opsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", g.m.handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := g.ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// ready reports why the gateway cannot take clients, or nil.
func (g *Gateway) ready(ctx context.Context) error {
	var errs []string
	if g.isClosed() {
		errs = append(errs, "shutting down")
	}
	if g.opts.NATS != nil && !g.opts.NATS.IsConnected() {
		errs = append(errs, "NATS "+g.opts.NATS.Status().String())
	}
	if err := g.writes.check(g.since()); err != nil {
		errs = append(errs, err.Error())
	}
	if g.opts.Ready != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := g.opts.Ready(ctx); err != nil {
			errs = append(errs, "functions: "+err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}
