package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Defaults of Options; a zero field takes its default.
const (
	DefaultAddr     = "127.0.0.1:8080"
	DefaultWSPath   = "/ws"
	DefaultPushPath = "/push"
	// DefaultServiceID and DefaultStage fill requestContext like a real
	// gateway service published to its release environment.
	DefaultServiceID = "service-emulator"
	DefaultStage     = "release"
	// DefaultIdleTimeout closes connections with no frame in either
	// direction for this long.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultMaxMessageSize bounds one frame, either direction.
	DefaultMaxMessageSize = 128 << 10
	// DefaultMaxConnections is the connection limit the emulator is sized
	// for; beyond it upgrades get 503.
	DefaultMaxConnections = 10000
	// DefaultFunctionTimeout is SCF's default function timeout, the
	// deadline of every invocation.
	DefaultFunctionTimeout = 3 * time.Second
	// DefaultWriteTimeout bounds one frame write to a client, so a slow
	// client cannot hold a push request.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultShutdownTimeout bounds Close.
	DefaultShutdownTimeout = 10 * time.Second
)

// Options configure a Gateway. Use DefaultOptions, or leave fields zero to
// take the defaults; New validates.
type Options struct {
	// Addr is where Run listens.
	Addr string
	// WSPath serves WebSocket clients, PushPath the reverse-push address.
	WSPath   string
	PushPath string
	// ServiceID and Stage go into the connecting event's requestContext.
	ServiceID string
	Stage     string

	// IdleTimeout closes a connection with no frame either way for this
	// long (1001, then cleanup).
	IdleTimeout time.Duration
	// MaxMessageSize bounds a frame in either direction: a larger client
	// frame closes the client with 1009, a larger push gets 413.
	MaxMessageSize int64
	// MaxConnections bounds open connections plus upgrades in progress;
	// beyond it an upgrade gets 503.
	MaxConnections int
	// FunctionTimeout is the deadline of every invocation.
	FunctionTimeout time.Duration
	// WriteTimeout bounds one push's frame write; a client that cannot
	// take it in time is disconnected and the push gets 410.
	WriteTimeout time.Duration
	// ShutdownTimeout bounds Close.
	ShutdownTimeout time.Duration

	// Register, Transfer and Cleanup are the three functions of the
	// WebSocket API. A single-function deployment sets all three to the
	// same Invoker: it dispatches on websocket.action.
	Register Invoker
	Transfer Invoker
	Cleanup  Invoker

	// Fallback serves every path other than WSPath and PushPath (the demo
	// page, for example); nil answers 404.
	Fallback http.Handler

	// Logger receives connection and push events; nil discards them.
	Logger *slog.Logger
}

// DefaultOptions returns Options with every default filled in and no
// invokers.
func DefaultOptions() Options {
	return Options{}.withDefaults()
}

func (o Options) withDefaults() Options {
	str := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	dur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	str(&o.Addr, DefaultAddr)
	str(&o.WSPath, DefaultWSPath)
	str(&o.PushPath, DefaultPushPath)
	str(&o.ServiceID, DefaultServiceID)
	str(&o.Stage, DefaultStage)
	dur(&o.IdleTimeout, DefaultIdleTimeout)
	dur(&o.FunctionTimeout, DefaultFunctionTimeout)
	dur(&o.WriteTimeout, DefaultWriteTimeout)
	dur(&o.ShutdownTimeout, DefaultShutdownTimeout)
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Validate reports every setting that cannot work, after defaults.
func (o Options) Validate() error {
	o = o.withDefaults()
	var errs []error
	for _, p := range []struct{ name, v string }{{"WSPath", o.WSPath}, {"PushPath", o.PushPath}} {
		if !strings.HasPrefix(p.v, "/") || p.v == "/" {
			errs = append(errs, fmt.Errorf("gateway: %s %q must start with / and not be /", p.name, p.v))
		}
	}
	if o.WSPath == o.PushPath {
		errs = append(errs, fmt.Errorf("gateway: WSPath and PushPath are both %q", o.WSPath))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"IdleTimeout", o.IdleTimeout},
		{"FunctionTimeout", o.FunctionTimeout},
		{"WriteTimeout", o.WriteTimeout},
		{"ShutdownTimeout", o.ShutdownTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("gateway: %s %v must be positive", d.name, d.v))
		}
	}
	if o.MaxMessageSize < 0 {
		errs = append(errs, fmt.Errorf("gateway: MaxMessageSize %d must be positive", o.MaxMessageSize))
	}
	if o.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("gateway: MaxConnections %d must be positive", o.MaxConnections))
	}
	for _, f := range []struct {
		name string
		inv  Invoker
	}{{"Register", o.Register}, {"Transfer", o.Transfer}, {"Cleanup", o.Cleanup}} {
		if f.inv == nil {
			errs = append(errs, fmt.Errorf("gateway: no %s invoker (one invoker may serve all three roles)", f.name))
		}
	}
	return errors.Join(errs...)
}
