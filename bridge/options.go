package bridge

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsbridge/wsbridge/subjects"
)

// Options configure a Bridge. The zero value of each field takes the default
// shown; Validate reports settings that cannot work.
type Options struct {
	// Prefix of every subject, stream and bucket name ("ws").
	Prefix string
	// PushURL is where connections go whose id names no self-hosted edge
	// instance: API Gateway's reverse-push address (required; with edge
	// instances only, their push address or Service). `wsbridge gateway`
	// instances are found through NATS.
	PushURL string
	// PushToken, when set, is sent as "Authorization: Bearer <token>" with
	// every push (the edge's --push-token).
	PushToken string
	// AllowPlainPush lets the token go to edge instances that advertise a
	// plain http:// push URL off this host. Without it such an instance's
	// pushes are dead-lettered (permanent): anyone who can write the
	// instances bucket could otherwise collect the token in the clear.
	AllowPlainPush bool
	// HTTPAddr serves /metrics, /healthz and /readyz; "" serves nothing.
	HTTPAddr string
	// Concurrency is the number of pushes in flight at once, and the size of
	// the HTTP connection pool to the gateway (64).
	Concurrency int
	// PushTimeout bounds one push, connect to answer (10s).
	PushTimeout time.Duration
	// PushRate limits pushes per second across the bridge; 0 is unlimited.
	PushRate float64
	// PushBurst is the rate limiter's burst (Concurrency).
	PushBurst int
	// MaxAttempts is how many pushes a message gets for transient failures
	// before it is dead-lettered with reason "retries" (10).
	MaxAttempts int
	// BackoffBase and BackoffMax shape the exponential retry delay
	// (250ms, 30s); BackoffJitter is the random fraction taken off (0.2).
	BackoffBase   time.Duration
	BackoffMax    time.Duration
	BackoffJitter float64
	// Partitions is the number of outbound partitions (32); every bridge
	// sharing a stream must use the same. Changing it needs an empty stream.
	Partitions int
	// LeaseTTL is how long a partition lease lives without renewal (4s):
	// a bridge that dies or is cut off from NATS loses its partitions
	// after it, and stops pushing at three quarters of it.
	LeaseTTL time.Duration
	// ID names this instance in the leases; empty: host-pid-random.
	ID string
	// MaxHeldBytes bounds the bytes of the commands this bridge holds
	// (bodies and their push bodies, see heldSize), shared evenly by the
	// partitions it owns: a partition past its share stops taking and
	// reads the log again from there once it drained (128 MiB; a partition
	// holding nothing always takes one command).
	MaxHeldBytes int64
	// ReplayWindow is how much of what every partition resolved the
	// outbound log keeps before it is trimmed (2m).
	ReplayWindow time.Duration
	// ShutdownTimeout bounds Stop: in-flight pushes get this long to
	// finish; what is left is handed back to JetStream (15s).
	ShutdownTimeout time.Duration
	// APIWorkers is how many request-reply API requests are served at once
	// (16); APIQueue how many more may wait (256): a request finding the
	// queue full is answered "busy" at once.
	APIWorkers int
	APIQueue   int
	// APIMaxRequestBytes bounds one API request (64 KiB, far above the
	// largest valid one): a larger one is answered "request too large"
	// unread.
	APIMaxRequestBytes int64
	// Streams sizes the streams and bucket created at start.
	Streams subjects.StreamOptions
	// Name is the instance name used in logs ("wsbridge-bridge").
	Name string
}

// Deps are a Bridge's collaborators, passed in so tests and the dev command
// control them.
type Deps struct {
	// Conn is the NATS connection (required). The bridge does not close it.
	Conn *nats.Conn
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the bridge's metrics (only its own instruments:
	// the Go and process collectors are the registry owner's to add) and
	// Gatherer is what /metrics serves; both nil give the bridge a
	// registry of its own.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// APIConn serves the request-reply API; nil: the bridge opens a
	// connection of its own with Conn's options (its servers, credentials,
	// TLS) and closes it when it stops, so that requests never share Conn
	// with the partition leases. The bridge does not close a given one.
	APIConn *nats.Conn
	// HTTPClient pushes to the gateway; nil builds a keep-alive client
	// sized by Concurrency and PushTimeout.
	HTTPClient *http.Client
}

// Defaults used for zero Options fields.
const (
	DefaultHTTPAddr        = "127.0.0.1:9180"
	DefaultConcurrency     = 64
	DefaultPushTimeout     = 10 * time.Second
	DefaultMaxAttempts     = 10
	DefaultBackoffBase     = 250 * time.Millisecond
	DefaultBackoffMax      = 30 * time.Second
	DefaultBackoffJitter   = 0.2
	DefaultPartitions      = subjects.DefaultPartitions
	DefaultLeaseTTL        = 4 * time.Second
	DefaultReplayWindow    = 2 * time.Minute
	DefaultShutdownTimeout = 15 * time.Second
	DefaultMaxHeldBytes    = 128 << 20
	DefaultAPIWorkers      = 16
	DefaultAPIQueue        = 256
	// DefaultAPIMaxRequestBytes is twice the largest valid request: a
	// group.add of subjects.MaxGroups groups of subjects.MaxNameLen bytes,
	// JSON quoted, and the longest token.
	DefaultAPIMaxRequestBytes = 64 << 10
)

// WithDefaults returns o with every zero field set to its default.
func (o Options) WithDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = subjects.DefaultPrefix
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.PushTimeout == 0 {
		o.PushTimeout = DefaultPushTimeout
	}
	if o.PushBurst == 0 {
		o.PushBurst = o.Concurrency
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.BackoffBase == 0 {
		o.BackoffBase = DefaultBackoffBase
	}
	if o.BackoffMax == 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.BackoffJitter == 0 {
		o.BackoffJitter = DefaultBackoffJitter
	}
	if o.ReplayWindow == 0 {
		o.ReplayWindow = DefaultReplayWindow
	}
	if o.Partitions == 0 {
		o.Partitions = DefaultPartitions
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.ID == "" {
		o.ID = instanceID()
	}
	// The outbound stream is provisioned with the bridge's partitions.
	o.Streams.Partitions = o.Partitions
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.MaxHeldBytes == 0 {
		o.MaxHeldBytes = DefaultMaxHeldBytes
	}
	if o.Name == "" {
		o.Name = "wsbridge-bridge"
	}
	if o.APIWorkers == 0 {
		o.APIWorkers = DefaultAPIWorkers
	}
	if o.APIQueue == 0 {
		o.APIQueue = DefaultAPIQueue
	}
	if o.APIMaxRequestBytes == 0 {
		o.APIMaxRequestBytes = DefaultAPIMaxRequestBytes
	}
	return o
}

// Validate reports settings that cannot work, all at once.
func (o Options) Validate() error {
	var errs []error
	if _, err := subjects.New(o.Prefix); err != nil {
		errs = append(errs, err)
	}
	if o.PushURL == "" {
		errs = append(errs, errors.New("push URL is required: set --push-url or WSBRIDGE_PUSH_URL"))
	} else if u, err := url.Parse(o.PushURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("push URL %q: want http(s)://host/path", redactPushURL(o.PushURL)))
	}
	if err := subjects.CheckPushToken(o.PushToken); err != nil {
		errs = append(errs, err)
	}
	pos := func(name string, v int64) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", name, v))
		}
	}
	pos("concurrency", int64(o.Concurrency))
	pos("push timeout", int64(o.PushTimeout))
	pos("push burst", int64(o.PushBurst))
	pos("max attempts", int64(o.MaxAttempts))
	pos("backoff base", int64(o.BackoffBase))
	pos("replay window", int64(o.ReplayWindow))
	pos("shutdown timeout", int64(o.ShutdownTimeout))
	pos("max held bytes", o.MaxHeldBytes)
	pos("api workers", int64(o.APIWorkers))
	pos("api queue", int64(o.APIQueue))
	pos("api max request bytes", o.APIMaxRequestBytes)
	if o.Partitions < 1 || o.Partitions > subjects.MaxPartitions {
		errs = append(errs, fmt.Errorf("partitions must be within 1..%d, got %d", subjects.MaxPartitions, o.Partitions))
	}
	if o.LeaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease TTL must be at least 1s, got %v", o.LeaseTTL))
	}
	if o.ID != "" && !validKey(o.ID) {
		errs = append(errs, fmt.Errorf("instance id %q: want letters, digits, '-' and '_'", o.ID))
	}
	if o.BackoffMax < o.BackoffBase {
		errs = append(errs, fmt.Errorf("backoff max %v is below backoff base %v", o.BackoffMax, o.BackoffBase))
	}
	if o.BackoffJitter < 0 || o.BackoffJitter > 1 {
		errs = append(errs, fmt.Errorf("backoff jitter must be within 0..1, got %v", o.BackoffJitter))
	}
	if o.PushRate < 0 {
		errs = append(errs, fmt.Errorf("push rate must not be negative, got %v", o.PushRate))
	}
	return errors.Join(errs...)
}

func (o Options) policy() Policy {
	return Policy{MaxAttempts: o.MaxAttempts, BackoffBase: o.BackoffBase, BackoffMax: o.BackoffMax, Jitter: o.BackoffJitter}
}

// redactPushURL keeps only scheme and host: the reverse-push path is a
// capability (anyone who knows it can push to every client).
func redactPushURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(unparsable URL)"
	}
	return u.Scheme + "://" + u.Host
}

func validKey(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return len(s) <= 128
}
