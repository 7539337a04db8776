package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/tencentyun/scf-go-lib/functioncontext"

	"github.com/wsbridge/wsbridge/subjects"
)

// Roles of the functions, as accepted by Functions.Invoker.
const (
	RoleRegister  = "register"  // connecting events
	RoleTransfer  = "transfer"  // data events
	RoleCleanup   = "cleanup"   // closing events
	RoleWebSocket = "websocket" // all three, by websocket.action
)

// maxDialTimeout bounds one NATS dial even when the invocation has longer.
const maxDialTimeout = 5 * time.Second

// Invoker invokes one SCF function with a JSON event and returns its JSON
// answer: the shape of scf-go-lib's cloudfunction.Handler. It is the one
// interface between the gateway and a function, whether in process
// (Functions.Invoker) or a binary over SCF's net/rpc (scfrpc.Client,
// gateway.RPCInvoker). The gateway calls it with a context that carries a
// functioncontext.FunctionContext (RequestID, FunctionName) and the function
// timeout as its deadline, as the SCF runtime does. An error is a failed
// invocation (SCF's non-200).
type Invoker interface {
	Invoke(ctx context.Context, payload []byte) ([]byte, error)
}

// HandlerFunc adapts a handler method (Register, Transfer, …), or any
// function of that shape, to Invoker.
type HandlerFunc func(ctx context.Context, payload json.RawMessage) (json.RawMessage, error)

// Invoke calls h.
func (h HandlerFunc) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return h(ctx, payload)
}

// Functions holds what the handlers share within one process: the
// configuration and one NATS connection, reused across invocations. Its
// methods are safe for concurrent use.
type Functions struct {
	getenv func(string) string // configuration source of a lazy Functions
	nc     *nats.Conn          // caller's connection, never closed here
	now    func() time.Time

	// setup serialises reading the configuration and dialling NATS. It is
	// a channel rather than a mutex so that a waiting invocation gives up
	// at its deadline.
	setup  chan struct{}
	cfg    atomic.Pointer[config]
	conn   atomic.Pointer[natsConn]
	closed atomic.Bool
}

// config is a validated configuration.
type config struct {
	opts  Options
	names subjects.Names
	log   *slog.Logger
}

// natsConn is the connection the handlers use.
type natsConn struct {
	nc  *nats.Conn
	own bool // dialled here, closed by Close
	js  jetstream.JetStream
	kv  atomic.Value // jetstream.KeyValue, looked up once
}

// New returns the functions configured by opts. nc may be nil: the first
// invocation then dials opts.NATS (whose URL is required), and the
// connection is closed by Close. A given nc stays the caller's.
func New(opts Options, nc *nats.Conn) (*Functions, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if nc == nil && opts.NATS.URL == "" {
		return nil, fmt.Errorf("%w: no NATS connection and no URL (set %sNATS_URL)", ErrConfig, subjects.EnvPrefix)
	}
	f := newFunctions(nil, nc)
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	f.cfg.Store(cfg)
	return f, nil
}

// NewFromEnv returns functions that read their configuration through getenv
// (nil means os.Getenv) on the first invocation, not now: SCF may set
// environment variables per invocation (InvokeRequest.Environment), and a
// process must answer every invocation with a clear error rather than die
// on bad configuration. Until a configuration is valid, each invocation
// reads it again and fails with ErrConfig.
func NewFromEnv(getenv func(string) string) *Functions {
	if getenv == nil {
		getenv = os.Getenv
	}
	return newFunctions(getenv, nil)
}

func newFunctions(getenv func(string) string, nc *nats.Conn) *Functions {
	return &Functions{getenv: getenv, nc: nc, now: time.Now, setup: make(chan struct{}, 1)}
}

func newConfig(opts Options) (*config, error) {
	names, err := subjects.New(opts.Prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return &config{opts: opts, names: names, log: opts.logger(os.Stderr).With("component", "functions")}, nil
}

// Close closes the NATS connection dialled by the functions (not one given
// to New). Later invocations fail with ErrClosed. Close is idempotent.
func (f *Functions) Close() {
	if f.closed.Swap(true) {
		return
	}
	f.setup <- struct{}{}
	defer func() { <-f.setup }()
	if c := f.conn.Load(); c != nil && c.own {
		c.nc.Close()
	}
}

// Invoker returns the handler of role (RoleRegister, RoleTransfer,
// RoleCleanup or RoleWebSocket) as an Invoker. An unknown role yields an
// Invoker whose every invocation fails, so a wiring mistake is reported
// where it is used instead of panicking.
func (f *Functions) Invoker(role string) Invoker {
	h, err := f.Handler(role)
	if err != nil {
		return HandlerFunc(func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, err })
	}
	return h
}

// Handler returns the handler method of role.
func (f *Functions) Handler(role string) (HandlerFunc, error) {
	switch role {
	case RoleRegister:
		return f.Register, nil
	case RoleTransfer:
		return f.Transfer, nil
	case RoleCleanup:
		return f.Cleanup, nil
	case RoleWebSocket:
		return f.WebSocket, nil
	}
	return nil, fmt.Errorf("functions: unknown role %q (want register, transfer, cleanup or websocket)", role)
}

// lock takes the setup lock, giving up when ctx ends.
func (f *Functions) lock(ctx context.Context) error {
	select {
	case f.setup <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for setup: %w", ErrUnavailable, ctx.Err())
	}
}

func (f *Functions) unlock() { <-f.setup }

// config returns the configuration, reading it on first use.
func (f *Functions) config(ctx context.Context) (*config, error) {
	if f.closed.Load() {
		return nil, ErrClosed
	}
	if c := f.cfg.Load(); c != nil {
		return c, nil
	}
	if err := f.lock(ctx); err != nil {
		return nil, err
	}
	defer f.unlock()
	if c := f.cfg.Load(); c != nil {
		return c, nil
	}
	opts, err := OptionsFromEnv(f.getenv)
	if err != nil {
		return nil, err
	}
	if opts.NATS.URL == "" {
		return nil, fmt.Errorf("%w: %sNATS_URL is not set", ErrConfig, subjects.EnvPrefix)
	}
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	f.cfg.Store(c)
	return c, nil
}

// connection returns the NATS connection, dialling it on first use and again
// if the previous one was closed.
func (f *Functions) connection(ctx context.Context, cfg *config) (*natsConn, error) {
	if c := f.conn.Load(); c != nil && !c.nc.IsClosed() {
		return c, nil
	}
	if err := f.lock(ctx); err != nil {
		return nil, err
	}
	defer f.unlock()
	if f.closed.Load() {
		return nil, ErrClosed
	}
	if c := f.conn.Load(); c != nil && (!c.nc.IsClosed() || !c.own) {
		// A closed connection given by the caller is theirs to replace:
		// its errors say it is closed.
		return c, nil
	}
	nc := f.nc
	own := nc == nil
	if own {
		var err error
		if nc, err = dial(ctx, cfg); err != nil {
			return nil, err
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		if own {
			nc.Close()
		}
		return nil, fmt.Errorf("%w: jetstream: %w", ErrUnavailable, err)
	}
	c := &natsConn{nc: nc, own: own, js: js}
	f.conn.Store(c)
	return c, nil
}

// dial connects to NATS within ctx's deadline.
func dial(ctx context.Context, cfg *config) (*nats.Conn, error) {
	timeout := maxDialTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("%w: no time left to connect", ErrUnavailable)
	}
	co := cfg.opts.NATS
	co.Name = "wsbridge-functions"
	if _, err := co.NATSOptions(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	log := cfg.log
	nc, err := co.Connect(
		nats.Timeout(timeout),
		// Publishes fail at once while the connection is down instead of
		// waiting in a buffer: a buffered connect event could reach the
		// stream after register has rejected the connection, and a buffered
		// message only turns into a timeout at the deadline.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", subjects.RedactURL(nc.ConnectedUrl())) }),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err := subjects.CheckServerVersion(nc); err != nil {
		nc.Close()
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nc, nil
}

// registry returns the registry bucket, looked up once per connection.
func (c *natsConn) registry(ctx context.Context, names subjects.Names) (jetstream.KeyValue, error) {
	if kv, ok := c.kv.Load().(jetstream.KeyValue); ok {
		return kv, nil
	}
	kv, err := c.js.KeyValue(ctx, names.Bucket())
	if err != nil {
		return nil, storeError("registry bucket "+names.Bucket(), err)
	}
	c.kv.Store(kv)
	return kv, nil
}

// publish stores one inbound event in JetStream and waits for the ack.
func (c *natsConn) publish(ctx context.Context, subject string, data []byte, connID, msgID, dataType string) error {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(subjects.HeaderConnID, connID)
	m.Header.Set(subjects.HeaderMsgID, msgID)
	if dataType != "" {
		m.Header.Set(subjects.HeaderDataType, dataType)
	}
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		return storeError("publish "+subject, err)
	}
	return nil
}

// bound returns the context for an invocation's NATS calls. It ends a little
// before the invocation's deadline: an answer that arrives after the
// deadline is lost, and the gateway would see a timeout instead of the
// errNo or error that says what went wrong. Without a deadline (in-process
// callers), Options.Timeout bounds it.
func (cfg *config) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithTimeout(ctx, cfg.opts.Timeout)
	}
	reserve := min(time.Until(dl)/10, 250*time.Millisecond)
	return context.WithDeadline(ctx, dl.Add(-max(reserve, 0)))
}

// requestID returns the SCF request id of the invocation, the events'
// Nats-Msg-Id.
func requestID(ctx context.Context) string {
	if lc, ok := functioncontext.FromContext(ctx); ok && lc != nil && validHeaderValue(lc.RequestID) {
		return lc.RequestID
	}
	// In-process callers (the gateway emulator, tests) may carry no SCF
	// request id. A fresh unique id keeps Nats-Msg-Id sound: an empty or
	// shared id would disable de-duplication or, worse, make JetStream drop
	// distinct events as duplicates; a unique one only forgoes de-duplication
	// of retries that nobody could have identified anyway.
	return nuid.Next()
}

// validHeaderValue reports whether s is a usable, non-empty header value.
func validHeaderValue(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// recoverTo turns a panic in a handler into an error, so that no input can
// take down an in-process host such as the gateway emulator. scf-go-lib
// recovers too, but then asks SCF to restart the instance.
func recoverTo(err *error, log func() *slog.Logger) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("functions: internal error: %v", r)
		if l := log(); l != nil {
			l.Error("handler panic", "panic", r, "stack", string(debug.Stack()))
		}
	}
}

// logger returns the configured logger, or nil before configuration.
func (f *Functions) logger() *slog.Logger {
	if c := f.cfg.Load(); c != nil {
		return c.log
	}
	return nil
}
