package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
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

func (b *Bridge) serveHTTP() error {
	ln, err := net.Listen("tcp", b.opts.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", b.opts.HTTPAddr, err)
	}
	b.httpAddr = ln.Addr()
	b.httpSrv = &http.Server{Handler: b.Handler(), ReadHeaderTimeout: 5 * time.Second}
	b.httpDone = make(chan struct{})
	go func() {
		defer close(b.httpDone)
		if err := b.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("ops http server", "err", err)
		}
	}()
	b.log.Info("serving ops endpoints", "addr", ln.Addr().String())
	return nil
}
