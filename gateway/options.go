package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
)

// Defaults of Options; a zero field takes its default.
const (
	DefaultAddr     = "127.0.0.1:8080"
	DefaultWSPath   = "/ws"
	DefaultPushPath = "/push"
	// DefaultServiceID and DefaultStage fill the connecting event's
	// requestContext (--service-id, --stage): the edge names itself, and
	// the stage is API Gateway's published environment, which backends
	// moved from API Gateway expect.
	DefaultServiceID = "wsbridge-gateway"
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
	// DefaultSendQueueBytes and DefaultSendQueueMessages bound what one
	// connection may have been pushed and not yet written; past either the
	// client is closed with 1008. With a reading client the queue stays
	// near empty: the socket's buffers take the frames as they come.
	DefaultSendQueueBytes    = 1 << 20
	DefaultSendQueueMessages = 1024
	// DefaultInRate and DefaultInBurst bound the messages one client
	// sends: a burst of DefaultInBurst at once, then DefaultInRate a
	// second. Past either bound the client is closed with 1008.
	DefaultInRate  = 100
	DefaultInBurst = 1000
	// DefaultInBytesRate and DefaultInBytesBurst bound the bytes one
	// client sends likewise (a burst is never below MaxMessageSize).
	DefaultInBytesRate  = 1 << 20
	DefaultInBytesBurst = 8 << 20
	// DefaultShutdownTimeout bounds Close.
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultReadTimeout bounds reading one HTTP request, headers and body
	// (a push, the upgrade request, an ops request).
	DefaultReadTimeout = 10 * time.Second
	// DefaultKeepAliveTimeout closes a keep-alive HTTP connection with no
	// request for this long (push clients, ops scrapers).
	DefaultKeepAliveTimeout = 60 * time.Second
	// DefaultMaxHeaderBytes bounds the request line and headers.
	DefaultMaxHeaderBytes = 16 << 10
	// DefaultMaxHTTPConnections bounds the TCP connections of each listener
	// that are not WebSockets (push, ops, upgrades in progress); beyond it a
	// connection is closed at once.
	DefaultMaxHTTPConnections = 1024
	// DefaultHandshakeTimeout bounds, on the client listener, the TLS
	// handshake and request headers of a new connection, and how long a
	// keep-alive connection may stay idle there.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultPingInterval pings a client with no frame for this long; no
	// pong within another interval closes it.
	DefaultPingInterval = 30 * time.Second
	// DefaultInstanceTTL is how long an edge instance's record in the
	// instances bucket lives without a refresh (refreshed every third of
	// it); a dead instance's connections are announced lost after it.
	DefaultInstanceTTL = 10 * time.Second
	// MaxInstanceTTL keeps the announcement of a dead instance's
	// connections, about two TTLs after its death, within SPEC §6's 30s.
	MaxInstanceTTL = 15 * time.Second
	// DefaultResumeWindow is how long a resumable session outlives its
	// socket (see ResumeWindow).
	DefaultResumeWindow = 30 * time.Second
	// DefaultResumeBuffer bounds what one session keeps for its client,
	// DefaultResumeBufferTotal what every session of an instance keeps.
	DefaultResumeBuffer      = 1 << 20
	DefaultResumeBufferTotal = 256 << 20
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
	// WriteTimeout bounds writing one pushed frame to a client; a client
	// that cannot take it in time is disconnected (it does not read).
	WriteTimeout time.Duration
	// SendQueueBytes and SendQueueMessages bound a connection's send
	// queue: frames pushed (and answered 200) but not yet written. A push
	// that would pass either closes the client with 1008 and gets 410.
	// An empty queue takes any frame MaxMessageSize allows.
	SendQueueBytes    int64
	SendQueueMessages int
	// ShutdownTimeout bounds Close.
	ShutdownTimeout time.Duration
	// InRate and InBurst bound the messages of one client: a token bucket
	// of InBurst messages refilled at InRate a second. A message past it
	// is not forwarded and closes the client with 1008 ("inbound rate
	// exceeded"). 0 takes the default, a negative InRate turns the limit
	// off.
	InRate  float64
	InBurst int
	// InBytesRate and InBytesBurst bound the bytes of one client's
	// messages alike (a burst below MaxMessageSize is raised to it). 0
	// takes the default, a negative InBytesRate turns the limit off.
	InBytesRate  int64
	InBytesBurst int64

	// ResumeWindow is how long a resumable session (a client that asked
	// for one with ?resume=1) outlives its socket: the connection, its
	// token and registry record live on, pushes to it are kept, and the
	// client resumes where it left off (session.go). 0 takes the default,
	// a negative value turns sessions off: a client that asks for one is
	// told so (a reset with reason "off") before any function runs.
	ResumeWindow time.Duration
	// ResumeBuffer bounds the bytes one session keeps for its client
	// (pushes it has not acknowledged), ResumeBufferTotal those of every
	// session of the gateway; past either the session ends (slow).
	ResumeBuffer      int64
	ResumeBufferTotal int64

	// PushAddr, when set, serves PushPath on a listener of its own (Run
	// only); otherwise PushPath is served on Addr.
	PushAddr string
	// HTTPAddr, when set, serves /metrics, /healthz and /readyz (Run only).
	HTTPAddr string
	// PushToken, when set, is required as "Authorization: Bearer <token>"
	// on every push; a push without it gets 401.
	PushToken string
	// TLSCert and TLSKey (PEM files) make Addr serve wss:// and https://.
	TLSCert, TLSKey string
	// AllowedOrigins lists the Origin values an upgrade may carry (exact,
	// case-insensitive, e.g. "https://app.example.com"); empty allows any.
	// An upgrade without Origin (not a browser) is not affected.
	AllowedOrigins []string
	// MaxConnectionsPerIP bounds the connections of one client IP (0: no
	// bound); beyond it an upgrade gets 429.
	MaxConnectionsPerIP int
	// TrustedProxies are the peers whose X-Forwarded-For names the client
	// IP; anyone else's is ignored.
	TrustedProxies []netip.Prefix
	// ReadTimeout, KeepAliveTimeout and MaxHeaderBytes apply to every
	// listener's HTTP requests, and so does WriteTimeout (twice it bounds an
	// answer: a push may wait that long for a connection still being
	// registered); a WebSocket leaves
	// them once upgraded.
	ReadTimeout      time.Duration
	KeepAliveTimeout time.Duration
	MaxHeaderBytes   int
	// MaxHTTPConnections bounds each listener's TCP connections that are
	// not WebSockets.
	MaxHTTPConnections int
	// MaxHTTPConnectionsPerIP bounds the connections of one peer address
	// that are not WebSockets, per listener (0: a quarter of
	// MaxHTTPConnections); TrustedProxies are exempt. Past it, a new
	// connection takes the place of that address's connection waiting
	// longest for a request, or is closed at once.
	MaxHTTPConnectionsPerIP int
	// HandshakeTimeout bounds, on the client listener, a new connection's
	// TLS handshake and request headers; with pushes on a listener of
	// their own, it is also the keep-alive idle time there (a WebSocket
	// client sends one request).
	HandshakeTimeout time.Duration
	// PingInterval pings quiet clients; a negative value turns pings off.
	PingInterval time.Duration

	// NATS, when set, makes the gateway an edge instance (SPEC §6): its
	// connection ids name InstanceID, it advertises PushURL in the
	// instances bucket while it runs, announces its connections with
	// reason shutdown when it stops, and announces the connections of
	// instances that vanish with reason lost. Without it the gateway is
	// the emulator: plain ids, and cleanup invoked on shutdown.
	NATS *nats.Conn
	// Prefix of the subjects and buckets ("ws").
	Prefix string
	// InstanceID names this instance (CheckInstanceID); required with NATS.
	InstanceID string
	// PushURL is where bridges reach this instance's PushPath; required
	// with NATS.
	PushURL string
	// InstanceTTL is the life of the instance record without a refresh.
	InstanceTTL time.Duration
	// Ready, when set, is part of /readyz: the functions can be invoked.
	Ready func(context.Context) error

	// Register, Transfer and Cleanup are the three functions of the
	// WebSocket API. A single-function deployment sets all three to the
	// same Invoker: it dispatches on websocket.action.
	Register functions.Invoker
	Transfer functions.Invoker
	Cleanup  functions.Invoker

	// Fallback serves every path other than WSPath and PushPath (the demo
	// page, for example); nil answers 404.
	Fallback http.Handler

	// Logger receives connection and push events; nil discards them.
	Logger *slog.Logger

	// Registerer receives the gateway's metrics (wsbridge_gateway_*) and
	// Gatherer is what /metrics serves; both nil gives the gateway a
	// registry of its own. Only the gateway's instruments are registered:
	// the Go and process collectors are added by the registry's owner.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// DefaultOptions returns Options with every default filled in and no
// invokers.
func DefaultOptions() Options {
	return Options{}.withDefaults()
}

// orDefault sets *p to v when it is the zero value.
func orDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

func (o Options) withDefaults() Options {
	orDefault(&o.Addr, DefaultAddr)
	orDefault(&o.WSPath, DefaultWSPath)
	orDefault(&o.PushPath, DefaultPushPath)
	orDefault(&o.ServiceID, DefaultServiceID)
	orDefault(&o.Stage, DefaultStage)
	orDefault(&o.IdleTimeout, DefaultIdleTimeout)
	orDefault(&o.FunctionTimeout, DefaultFunctionTimeout)
	orDefault(&o.WriteTimeout, DefaultWriteTimeout)
	orDefault(&o.ShutdownTimeout, DefaultShutdownTimeout)
	orDefault(&o.ReadTimeout, DefaultReadTimeout)
	orDefault(&o.KeepAliveTimeout, DefaultKeepAliveTimeout)
	orDefault(&o.PingInterval, DefaultPingInterval)
	orDefault(&o.InstanceTTL, DefaultInstanceTTL)
	orDefault(&o.ResumeWindow, DefaultResumeWindow)
	orDefault(&o.ResumeBuffer, DefaultResumeBuffer)
	orDefault(&o.ResumeBufferTotal, DefaultResumeBufferTotal)
	orDefault(&o.MaxConnections, DefaultMaxConnections)
	orDefault(&o.MaxHeaderBytes, DefaultMaxHeaderBytes)
	orDefault(&o.MaxHTTPConnections, DefaultMaxHTTPConnections)
	orDefault(&o.MaxHTTPConnectionsPerIP, max(o.MaxHTTPConnections/4, 1))
	orDefault(&o.HandshakeTimeout, DefaultHandshakeTimeout)
	orDefault(&o.MaxMessageSize, DefaultMaxMessageSize)
	orDefault(&o.SendQueueBytes, DefaultSendQueueBytes)
	orDefault(&o.SendQueueMessages, DefaultSendQueueMessages)
	orDefault(&o.Prefix, subjects.DefaultPrefix)
	orDefault(&o.InRate, DefaultInRate)
	orDefault(&o.InBurst, DefaultInBurst)
	orDefault(&o.InBytesRate, DefaultInBytesRate)
	orDefault(&o.InBytesBurst, max(DefaultInBytesBurst, o.MaxMessageSize))
	// A message as large as allowed always fits in a full bucket.
	o.InBytesBurst = max(o.InBytesBurst, o.MaxMessageSize)
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
	if o.WSPath == clientJSPath || o.PushPath == clientJSPath {
		errs = append(errs, fmt.Errorf("gateway: %s is where the client library is served: choose another WSPath or PushPath", clientJSPath))
	}
	if (o.Registerer == nil) != (o.Gatherer == nil) {
		errs = append(errs, errors.New("gateway: Registerer and Gatherer go together (both nil: a registry of the gateway's own)"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"IdleTimeout", o.IdleTimeout},
		{"FunctionTimeout", o.FunctionTimeout},
		{"WriteTimeout", o.WriteTimeout},
		{"ShutdownTimeout", o.ShutdownTimeout},
		{"ReadTimeout", o.ReadTimeout},
		{"KeepAliveTimeout", o.KeepAliveTimeout},
		{"HandshakeTimeout", o.HandshakeTimeout},
		{"InstanceTTL", o.InstanceTTL},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("gateway: %s %v must be positive", d.name, d.v))
		}
	}
	if o.ResumeBuffer < 0 || o.ResumeBufferTotal < 0 {
		errs = append(errs, fmt.Errorf("gateway: --resume-buffer %d and --resume-buffer-total %d must be positive", o.ResumeBuffer, o.ResumeBufferTotal))
	}
	if o.MaxMessageSize < 0 {
		errs = append(errs, fmt.Errorf("gateway: MaxMessageSize %d must be positive", o.MaxMessageSize))
	}
	if o.SendQueueBytes < 0 {
		errs = append(errs, fmt.Errorf("gateway: --send-queue-bytes %d must be positive", o.SendQueueBytes))
	}
	if o.SendQueueMessages < 0 {
		errs = append(errs, fmt.Errorf("gateway: --send-queue-messages %d must be positive", o.SendQueueMessages))
	}
	if o.InBurst < 0 {
		errs = append(errs, fmt.Errorf("gateway: --in-burst %d must be positive", o.InBurst))
	}
	if o.InBytesBurst < 0 {
		errs = append(errs, fmt.Errorf("gateway: --in-bytes-burst %d must be positive", o.InBytesBurst))
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"MaxConnections", o.MaxConnections},
		{"MaxConnectionsPerIP", o.MaxConnectionsPerIP},
		{"MaxHeaderBytes", o.MaxHeaderBytes},
		{"MaxHTTPConnections", o.MaxHTTPConnections},
		{"MaxHTTPConnectionsPerIP", o.MaxHTTPConnectionsPerIP},
	} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("gateway: %s %d must be positive", n.name, n.v))
		}
	}
	if err := subjects.CheckPushToken(o.PushToken); err != nil {
		errs = append(errs, fmt.Errorf("gateway: --%w", err))
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		errs = append(errs, errors.New("gateway: --tls-cert and --tls-key go together"))
	}
	for _, origin := range o.AllowedOrigins {
		if u, err := url.Parse(origin); err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" {
			errs = append(errs, fmt.Errorf("gateway: allowed origin %q: want scheme://host[:port]", origin))
		}
	}
	if _, err := subjects.New(o.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("gateway: %w", err))
	}
	if o.NATS != nil {
		if err := subjects.CheckInstanceID(o.InstanceID); err != nil {
			errs = append(errs, fmt.Errorf("gateway: --instance-id: %w", err))
		}
		if u, err := url.Parse(o.PushURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("gateway: --push-url %q: want http(s)://host:port/push, where bridges reach this instance", o.PushURL))
		}
		if o.InstanceTTL < time.Second || o.InstanceTTL > MaxInstanceTTL {
			errs = append(errs, fmt.Errorf("gateway: --instance-ttl %v: want 1s to %v (a dead instance's connections must be announced lost within 30s)", o.InstanceTTL, MaxInstanceTTL))
		}
	}
	for _, f := range []struct {
		name string
		inv  functions.Invoker
	}{{"Register", o.Register}, {"Transfer", o.Transfer}, {"Cleanup", o.Cleanup}} {
		if f.inv == nil {
			errs = append(errs, fmt.Errorf("gateway: no %s invoker (one invoker may serve all three roles)", f.name))
		}
	}
	return errors.Join(errs...)
}
