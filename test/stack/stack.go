// Package stack assembles the whole of wsbridge on one machine: NATS (an
// embedded server with JetStream, or an existing one), the three functions
// (in process, or as real SCF binaries over net/rpc), the API Gateway
// emulator, the bridge pushing to the emulator, and optionally the demo page
// and backend. `wsbridge dev` and `wsbridge gateway` run it; the end-to-end
// tests start it with the function binaries, so what they test is what is
// deployed.
package stack

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/internal/embedded"
	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/demo"
)

// Options configure a Stack. Start from DefaultOptions.
type Options struct {
	// NATS is the NATS to use; an empty URL starts an embedded server with
	// JetStream on NATSListen, stored under DataDir.
	NATS       subjects.ConnOptions
	NATSListen string // host:port of the embedded server; port 0 or -1 picks a free one
	DataDir    string // embedded JetStream storage; "" uses a temporary directory removed on Close

	Prefix string

	// Functions chooses how the emulator invokes the handlers: "" in
	// process; a directory holding the register, transfer and cleanup
	// binaries; or the path of the single websocket function binary. Binaries
	// are started with _LAMBDA_SERVER_PORT and invoked over SCF's net/rpc.
	Functions   string
	Auth        functions.AuthMode
	AuthTimeout time.Duration

	// Gateway are the emulator's settings; its Addr is where it listens and
	// the three invokers are filled in by Start.
	Gateway gateway.Options

	// Bridge runs the bridge, pushing to the emulator; BridgeOptions are its
	// settings (PushURL and Prefix are filled in by Start).
	Bridge        bool
	BridgeOptions bridge.Options

	// Demo serves the demo chat page on / and runs the demo backend.
	Demo bool

	Logger *slog.Logger
}

// DefaultOptions are the addresses of SPEC §4: NATS on 127.0.0.1:4222, the
// emulator on 127.0.0.1:8080 (/ws, /push), metrics on 127.0.0.1:9180.
func DefaultOptions() Options {
	g := gateway.DefaultOptions()
	return Options{
		NATSListen:    "127.0.0.1:4222",
		Prefix:        subjects.DefaultPrefix,
		Auth:          functions.AuthOff,
		AuthTimeout:   functions.DefaultAuthTimeout,
		Gateway:       g,
		Bridge:        true,
		BridgeOptions: bridge.Options{HTTPAddr: bridge.DefaultHTTPAddr},
		Demo:          true,
	}
}

// Timeouts of starting and stopping a stack.
const (
	// ProvisionTimeout bounds creating the streams and the bucket.
	ProvisionTimeout = 15 * time.Second
	// BridgeStopTimeout is what the bridge gets to drain in-flight pushes
	// on Close.
	BridgeStopTimeout = 30 * time.Second
)

// Stack is a running wsbridge.
type Stack struct {
	opts    Options
	log     *slog.Logger
	NATS    *server.Server // nil when an existing NATS is used
	Conn    *nats.Conn
	Bridge  *bridge.Bridge // nil without Options.Bridge
	Gateway *gateway.Gateway
	Backend *demo.Backend // nil without Options.Demo
	// Registry holds the bridge's metrics.
	Registry *prometheus.Registry

	natsURL string
	gwAddr  net.Addr

	// stops undo what Start did, run last first by Close.
	stops    []func() error
	stopOnce sync.Once
	stopErr  error
}

// Start brings the stack up; on error everything started is stopped again.
func Start(ctx context.Context, o Options) (st *Stack, err error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Prefix == "" {
		o.Prefix = subjects.DefaultPrefix
	}
	names, err := subjects.New(o.Prefix)
	if err != nil {
		return nil, err
	}
	s := &Stack{opts: o, log: o.Logger}
	defer func() {
		if err != nil {
			_ = s.Close()
			st = nil
		}
	}()
	if err := s.startNATS(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(s.Conn)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, ProvisionTimeout)
	err = subjects.Provision(pctx, js, names, o.BridgeOptions.Streams)
	cancel()
	if err != nil {
		return nil, err
	}
	if err := s.startFunctions(ctx); err != nil {
		return nil, err
	}
	o = s.opts // with the invokers

	ls, err := gateway.Listen(ctx, o.Gateway)
	if err != nil {
		return nil, err
	}
	s.onClose(func() error { ls.Close(); return nil })
	s.gwAddr = ls.WS.Addr()

	if o.Demo {
		s.Backend, err = demo.NewBackend(s.Conn, o.Prefix, s.log)
		if err != nil {
			return nil, err
		}
		s.onClose(func() error { s.Backend.Stop(); return nil })
		// The backend lives until Close, not until the start context ends.
		if err := s.Backend.Start(context.WithoutCancel(ctx)); err != nil {
			return nil, err
		}
		o.Gateway.Fallback = demo.Page()
	}
	if o.Bridge {
		bo := o.BridgeOptions
		bo.Prefix = o.Prefix
		bo.PushURL = s.PushURL()
		s.Registry = metrics.NewProcessRegistry()
		b, err := bridge.New(bo, bridge.Deps{Conn: s.Conn, Logger: s.log, Registerer: s.Registry, Gatherer: s.Registry})
		if err != nil {
			return nil, err
		}
		s.Bridge = b
		s.onClose(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), BridgeStopTimeout)
			defer cancel()
			return b.Stop(ctx)
		})
		if err := b.Start(ctx); err != nil {
			return nil, err
		}
	}
	o.Gateway.Logger = s.log
	if o.Gateway.Registerer == nil && o.Gateway.Gatherer == nil {
		// The emulator's registry is its own, as in a process of its own.
		reg := metrics.NewProcessRegistry()
		o.Gateway.Registerer, o.Gateway.Gatherer = reg, reg
	}
	s.Gateway, err = gateway.New(o.Gateway)
	if err != nil {
		return nil, err
	}
	sctx, cancelServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Gateway.ServeAll(sctx, ls) }()
	s.onClose(func() error {
		err := s.Gateway.Close()
		cancelServe()
		if serr := <-served; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return err
	})
	return s, nil
}

// onClose adds a step to Close; steps run last first.
func (s *Stack) onClose(stop func() error) { s.stops = append(s.stops, stop) }

func (s *Stack) startNATS() error {
	o := s.opts
	o.NATS.Name = "wsbridge-dev"
	if o.NATS.URL != "" {
		nc, err := o.NATS.Connect()
		if err != nil {
			return err
		}
		s.Conn, s.natsURL = nc, o.NATS.URL
		s.onClose(func() error { _ = nc.Drain(); nc.Close(); return nil })
		return nil
	}
	en, err := embedded.Start(embedded.Options{Listen: o.NATSListen, DataDir: o.DataDir, Name: o.NATS.Name})
	if err != nil {
		return err
	}
	s.onClose(func() error { _ = en.Close(); return nil })
	s.NATS, s.Conn, s.natsURL = en.Server, en.Conn, en.URL()
	return nil
}

func (s *Stack) startFunctions(ctx context.Context) error {
	o := &s.opts
	fo := functions.DefaultOptions()
	fo.NATS = o.NATS
	fo.NATS.URL = s.natsURL
	fo.Prefix = o.Prefix
	fo.Auth = o.Auth
	fo.AuthTimeout = o.AuthTimeout
	if o.Gateway.MaxMessageSize > 0 {
		fo.MaxMessageSize = int(o.Gateway.MaxMessageSize)
	}
	fo.Logger = s.log
	fns, err := gateway.StartFunctions(ctx, gateway.FunctionsOptions{Dir: o.Functions, Functions: fo, Conn: s.Conn})
	if err != nil {
		return err
	}
	s.onClose(func() error { _ = fns.Close(); return nil })
	fns.Apply(&o.Gateway)
	return nil
}

// NATSURL is the URL of the stack's NATS.
func (s *Stack) NATSURL() string { return s.natsURL }

// URL is the emulator's base URL (the demo page with Options.Demo).
func (s *Stack) URL() string { return "http://" + s.gwAddr.String() + "/" }

// WSURL is the emulator's WebSocket endpoint.
func (s *Stack) WSURL() string {
	return "ws://" + s.gwAddr.String() + s.gatewayPath(s.opts.Gateway.WSPath, gateway.DefaultWSPath)
}

// PushURL is the emulator's reverse-push address.
func (s *Stack) PushURL() string {
	return "http://" + s.gwAddr.String() + s.gatewayPath(s.opts.Gateway.PushPath, gateway.DefaultPushPath)
}

// MetricsURL is the bridge's /metrics, or "" without the bridge's HTTP server.
func (s *Stack) MetricsURL() string {
	if s.Bridge == nil || s.Bridge.HTTPAddr() == nil {
		return ""
	}
	return "http://" + s.Bridge.HTTPAddr().String() + "/metrics"
}

func (s *Stack) gatewayPath(p, def string) string {
	if p == "" {
		return def
	}
	return p
}

// Close stops everything in the order that loses nothing, the reverse of
// Start's: the emulator first (its connections' cleanups still reach the
// functions and NATS), then the bridge (which drains in-flight pushes), the
// demo backend, the functions, and NATS last. It is idempotent.
func (s *Stack) Close() error {
	s.stopOnce.Do(func() {
		var errs []error
		for i := len(s.stops) - 1; i >= 0; i-- {
			errs = append(errs, s.stops[i]())
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}
