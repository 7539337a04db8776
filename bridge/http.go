package bridge

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/wsbridge/wsbridge/internal/connlimit"
)

// Handler serves /metrics, /healthz (the process can work: see Healthy) and
// /readyz (it can do its work now: see Ready).
func (b *Bridge) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(b.gather, promhttp.HandlerOpts{Registry: b.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := b.Healthy(); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := b.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// HTTPAddr is the address the ops endpoints listen on, once started with
// Options.HTTPAddr (useful with port 0); nil otherwise.
func (b *Bridge) HTTPAddr() net.Addr { return b.httpAddr }

// Bounds of the ops listener. A scraper and a prober need a few
// connections; idle ones beyond that (a keep-alive flood) are closed, the
// longest idle first, so they can neither keep /healthz from answering nor
// take the process's file descriptors.
const (
	// opsMaxConnections bounds the listener's connections.
	opsMaxConnections = 256
	// opsMaxConnectionsPerIP bounds one peer address's (an IPv6 peer's
	// /64).
	opsMaxConnectionsPerIP = 64
	// opsReadTimeout bounds reading a request, headers included.
	opsReadTimeout = 10 * time.Second
	// opsWriteTimeout bounds answering one (/metrics is the largest).
	opsWriteTimeout = 30 * time.Second
	// opsIdleTimeout closes a keep-alive connection idle this long.
	opsIdleTimeout = 60 * time.Second
	// opsMaxHeaderBytes bounds a request's line and headers.
	opsMaxHeaderBytes = 16 << 10
	// opsCapLogEvery spaces the log lines of a listener at its caps.
	opsCapLogEvery = 10 * time.Second
)

func (b *Bridge) serveHTTP() error {
	tcp, err := net.Listen("tcp", b.opts.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", b.opts.HTTPAddr, err)
	}
	b.httpAddr = tcp.Addr()
	every := rate.Sometimes{Interval: opsCapLogEvery}
	ln := connlimit.New(tcp, connlimit.Options{
		Max:     opsMaxConnections,
		PerAddr: opsMaxConnectionsPerIP,
		Refused: func() {
			every.Do(func() {
				b.log.Warn("ops listener at its connection cap: new connections closed at once",
					"max_connections", opsMaxConnections, "max_connections_per_ip", opsMaxConnectionsPerIP)
			})
		},
	})
	b.httpSrv = &http.Server{
		Handler:           b.Handler(),
		ReadHeaderTimeout: opsReadTimeout,
		ReadTimeout:       opsReadTimeout,
		WriteTimeout:      opsWriteTimeout,
		IdleTimeout:       opsIdleTimeout,
		MaxHeaderBytes:    opsMaxHeaderBytes,
		ConnState:         ln.ConnState,
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
	}
	b.httpDone = make(chan struct{})
	go func() {
		defer close(b.httpDone)
		if err := b.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("ops http server", "err", err)
		}
	}()
	b.log.Info("serving ops endpoints", "addr", tcp.Addr().String())
	return nil
}
