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
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/gateway"
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

	natsURL  string
	gwAddr   net.Addr
	fns      *gateway.Functions
	tmpDir   string
	cancel   context.CancelFunc
	served   chan error
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
	s := &Stack{opts: o, log: o.Logger, served: make(chan error, 1)}
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
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
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
	ln := closerFunc(ls.Close)
	s.gwAddr = ls.WS.Addr()

	if o.Bridge {
		bo := o.BridgeOptions
		bo.Prefix = o.Prefix
		bo.PushURL = s.PushURL()
		s.Registry = prometheus.NewRegistry()
		b, err := bridge.New(bo, bridge.Deps{Conn: s.Conn, Logger: s.log, Registry: s.Registry})
		if err != nil {
			ln.Close()
			return nil, err
		}
		s.Bridge = b
		if err := b.Start(ctx); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if o.Demo {
		s.Backend, err = demo.NewBackend(s.Conn, o.Prefix, s.log)
		if err != nil {
			ln.Close()
			return nil, err
		}
		// The backend lives until Close, not until the start context ends.
		if err := s.Backend.Start(context.WithoutCancel(ctx)); err != nil {
			ln.Close()
			return nil, err
		}
		o.Gateway.Fallback = demo.Page()
	}
	o.Gateway.Logger = s.log
	s.Gateway, err = gateway.New(o.Gateway)
	if err != nil {
		ln.Close()
		return nil, err
	}
	sctx, cancelServe := context.WithCancel(context.Background())
	s.cancel = cancelServe
	go func() { s.served <- s.Gateway.ServeAll(sctx, ls) }()
	return s, nil
}

type closerFunc func()

func (f closerFunc) Close() { f() }

func (s *Stack) startNATS() error {
	o := s.opts
	o.NATS.Name = "wsbridge-dev"
	if o.NATS.URL != "" {
		nc, err := o.NATS.Connect()
		if err != nil {
			return err
		}
		s.Conn, s.natsURL = nc, o.NATS.URL
		return nil
	}
	host, port, err := splitHostPort(o.NATSListen)
	if err != nil {
		return err
	}
	dir := o.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "wsbridge-dev-"); err != nil {
			return err
		}
		s.tmpDir = dir
	} else if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if port == 0 {
		port = -1 // EmbeddedOptions reads 0 as the default port
	}
	srv, err := bridge.StartEmbeddedNATS(bridge.EmbeddedOptions{Host: host, Port: port, StoreDir: dir})
	if err != nil {
		return err
	}
	s.NATS = srv
	s.natsURL = srv.ClientURL()
	nc, err := nats.Connect(s.natsURL, nats.Name(o.NATS.Name), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect embedded nats: %w", err)
	}
	s.Conn = nc
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
	s.fns = fns
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

// Close stops everything in the order that loses nothing: the emulator first
// (its connections' cleanups still reach the functions and NATS), then the
// bridge (which drains in-flight pushes), the demo backend, the functions,
// and NATS last. It is idempotent.
func (s *Stack) Close() error {
	s.stopOnce.Do(func() {
		var errs []error
		if s.Gateway != nil {
			errs = append(errs, s.Gateway.Close())
			s.cancel()
			if err := <-s.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs = append(errs, err)
			}
		}
		if s.Bridge != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			errs = append(errs, s.Bridge.Stop(ctx))
			cancel()
		}
		if s.Backend != nil {
			s.Backend.Stop()
		}
		if s.fns != nil {
			_ = s.fns.Close()
		}
		if s.Conn != nil {
			_ = s.Conn.Drain()
			s.Conn.Close()
		}
		if s.NATS != nil {
			s.NATS.Shutdown()
			s.NATS.WaitForShutdown()
		}
		if s.tmpDir != "" {
			_ = os.RemoveAll(s.tmpDir)
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("nats listen address %q: %w", addr, err)
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < -1 || p > 65535 {
		return "", 0, fmt.Errorf("nats listen address %q: bad port", addr)
	}
	return strings.TrimSpace(host), p, nil
}
