package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// Bridge reads the outbound log and turns each command into reverse pushes
// to the gateway. Build one with New, then Run it (or Start and Stop).
type Bridge struct {
	opts   Options
	names  subjects.Names
	policy Policy
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	reg    prometheus.Registerer
	gather prometheus.Gatherer
	m      *metrics.Metrics
	pushes pushCounters
	pusher *pusher
	router *router

	kv  jetstream.KeyValue
	idx *index
	// api serves the request-reply API on a NATS connection of its own
	// (api.go); apiConn is Deps.APIConn.
	api     *api
	apiConn *nats.Conn
	// idxRev is the last registry revision the index applied; idxChecked
	// when (Unix ns, this bridge's clock) it last proved current
	// (indexCurrent).
	idxRev     atomic.Uint64
	idxChecked atomic.Int64
	subs       []*nats.Subscription

	// Registry refreshes (see maybeRefresh): the bucket's TTL, the queue
	// of tokens to refresh and the tokens queued or being refreshed.
	regTTL     time.Duration
	refreshCh  chan string
	refreshMu  sync.Mutex
	refreshing map[string]struct{}

	// Partitioned work (see ownership.go, partition.go, reader.go): this
	// instance's id in the leases, the base of monotonic fence times, the
	// lease keeper, the positions bucket, the log reader and the
	// partitions held.
	id        string
	epoch     time.Time
	own       *owner
	positions jetstream.KeyValue
	reader    *reader
	gone      *goneSet // connections answered gone, dead-lettered without a push
	pm        *metrics.Partitions
	ready     *readyQueue
	pmu       sync.Mutex
	parts     map[int]*part
	partList  atomic.Pointer[[]*part] // parts in order, for the reader (snapParts)
	// Bytes held over every partition; guarded by hmu. pausedParts counts
	// the partitions paused for want of room (part.pause).
	hmu         sync.Mutex
	heldBytes   int64
	pausedParts atomic.Int64

	started   atomic.Bool
	stopping  atomic.Bool
	synced    atomic.Bool
	consuming atomic.Bool        // the lease keeper runs
	stopCh    chan struct{}      // closed when Stop begins
	quit      chan struct{}      // closed when workers and loops must exit
	ends      *ends              // connection ends waiting out their grace
	bgCtx     context.Context    // background loops (KV watch, sampler)
	bgCancel  context.CancelFunc // cancels bgCtx
	pushCtx   context.Context    // cancelled at the shutdown deadline
	cancel    context.CancelFunc // cancels pushCtx
	syncedCh  chan struct{}
	wg        sync.WaitGroup
	stopOnce  sync.Once
	stopErr   error
	stopDone  chan struct{}
	httpSrv   *http.Server
	httpAddr  net.Addr
	httpDone  chan struct{}
	lastRecon uint64
}

// New checks the options and builds a bridge; it does not touch the network.
func New(o Options, deps Deps) (*Bridge, error) {
	o = o.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("bridge options: %w", err)
	}
	if deps.Conn == nil {
		return nil, ErrNoConn
	}
	names, err := subjects.New(o.Prefix)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(deps.Conn)
	if err != nil {
		return nil, fmt.Errorf("bridge: jetstream: %w", err)
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	reg, gatherer := deps.Registerer, deps.Gatherer
	switch {
	case reg == nil && gatherer == nil:
		own := prometheus.NewRegistry()
		reg, gatherer = own, own
	case reg == nil || gatherer == nil:
		return nil, errors.New("bridge: Deps.Registerer and Deps.Gatherer go together (both nil: a registry of the bridge's own)")
	}
	hc := deps.HTTPClient
	if hc == nil {
		hc = newHTTPClient(o.Concurrency, o.PushTimeout)
	}
	hc = withoutRedirects(hc)
	p, err := newPusher(hc, o.PushURL, o.PushToken)
	if err != nil {
		return nil, fmt.Errorf("bridge options: %w", err)
	}
	if deps.HTTPClient == nil {
		p.h1 = newH1(o.Concurrency, o.PushTimeout)
	}
	if o.PushRate > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(o.PushRate), o.PushBurst)
	}
	m := metrics.New(reg)
	b := &Bridge{
		opts:   o,
		names:  names,
		policy: o.policy(),
		nc:     deps.Conn,
		js:     js,
		log:    log.With("component", "bridge"),
		reg:    reg,
		gather: gatherer,
		m:      m,
		pushes: newPushCounters(m),
		pusher: p,
		router: newRouter(js, names, p.url),
		idx:    newIndex(),
		gone:   newGoneSet(),
		ready:  newReadyQueue(),
		id:     o.ID,
		epoch:  time.Now(),
		pm:     metrics.NewPartitions(reg),
		parts:  map[int]*part{},

		refreshCh:  make(chan string, refreshQueue),
		refreshing: map[string]struct{}{},
		stopCh:     make(chan struct{}),
		quit:       make(chan struct{}),
		syncedCh:   make(chan struct{}),
		stopDone:   make(chan struct{}),
	}
	b.reader = newReader(b)
	b.ends = newEnds(b)
	b.router.plainRefused = o.PushToken != "" && !o.AllowPlainPush
	b.router.holder = b.idx.holder
	b.apiConn = deps.APIConn
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())
	b.pushCtx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// Metrics returns the bridge's instruments.
func (b *Bridge) Metrics() *metrics.Metrics { return b.m }

// Gatherer returns what /metrics serves.
func (b *Bridge) Gatherer() prometheus.Gatherer { return b.gather }

// Names returns the subject names under the bridge's prefix.
func (b *Bridge) Names() subjects.Names { return b.names }

// Run starts the bridge, serves until ctx is done, then stops it within
// ShutdownTimeout. It returns nil after a clean stop.
func (b *Bridge) Run(ctx context.Context) error {
	if err := b.Start(ctx); err != nil {
		_ = b.Stop(context.Background())
		return err
	}
	closed := b.nc.StatusChanged(nats.CLOSED)
	defer b.nc.RemoveStatusListener(closed)
	select {
	case <-ctx.Done():
	case <-b.stopCh: // stopped by someone else
	case <-closed:
	}
	if err := b.Healthy(); err != nil {
		// Nothing can bring the connection back: stop and say so, so the
		// process exits non-zero and its supervisor restarts it.
		b.log.Error("nats connection closed for good; stopping", "err", err)
		return errors.Join(err, b.Stop(context.Background()))
	}
	return b.Stop(context.Background())
}

// Start provisions the streams and bucket, loads the registry index, and
// starts consuming, serving the API and (with HTTPAddr) the ops endpoints.
// It returns once the bridge is consuming.
func (b *Bridge) Start(ctx context.Context) error {
	if b.stopping.Load() {
		return ErrStopped
	}
	if !b.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	b.log.Info("starting", "prefix", b.names.Prefix(), "push", redactPushURL(b.opts.PushURL),
		"concurrency", b.opts.Concurrency, "max_attempts", b.opts.MaxAttempts, "push_rate", b.opts.PushRate)
	if b.opts.HTTPAddr != "" {
		if err := b.serveHTTP(); err != nil {
			return err
		}
	}
	if err := subjects.Provision(ctx, b.js, b.names, b.opts.Streams); err != nil {
		return err
	}
	pkv, err := b.js.KeyValue(ctx, b.names.Positions())
	if err != nil {
		return fmt.Errorf("positions bucket %s: %w", b.names.Positions(), err)
	}
	b.positions = pkv
	kv, err := b.js.KeyValue(ctx, b.names.Bucket())
	if err != nil {
		return fmt.Errorf("registry bucket %s: %w", b.names.Bucket(), err)
	}
	b.kv = kv
	b.regTTL = registryTTL(b.opts.Streams.RegistryTTL)
	if st, err := kv.Status(ctx); err == nil && st.TTL() > 0 {
		b.regTTL = st.TTL()
	}
	w, err := kv.WatchAll(b.bgCtx)
	if err != nil {
		return fmt.Errorf("watch registry %s: %w", b.names.Bucket(), err)
	}
	b.wg.Add(1)
	go b.watch(w)
	// Fan-outs expand through the index, so it must be loaded before the
	// first broadcast is consumed.
	select {
	case <-b.syncedCh:
	case <-ctx.Done():
		return fmt.Errorf("load registry index: %w", ctx.Err())
	}
	b.log.Info("registry index loaded", "connections", b.idx.size())

	if err := b.connectAPI(ctx, b.apiConn); err != nil {
		return err
	}
	if err := b.serveAPI(); err != nil {
		return err
	}
	sub, err := b.nc.Subscribe(b.names.Inbound(), b.countInbound)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", b.names.Inbound(), err)
	}
	b.subs = append(b.subs, sub)

	lkv, err := b.js.CreateOrUpdateKeyValue(ctx, leaseBucketConfig(b.names, b.opts))
	if err != nil {
		return fmt.Errorf("lease bucket %s: %w", b.names.Leases(), err)
	}
	b.own = newOwner(b, lkv)
	lw, err := lkv.WatchAll(b.bgCtx)
	if err != nil {
		return fmt.Errorf("watch lease bucket %s: %w", b.names.Leases(), err)
	}
	leasesSeen := make(chan struct{})
	b.wg.Add(1)
	go b.own.watch(lw, leasesSeen)
	select {
	case <-leasesSeen:
	case <-ctx.Done():
		return fmt.Errorf("load leases: %w", ctx.Err())
	}
	for i := 0; i < b.opts.Concurrency; i++ {
		b.wg.Add(1)
		go b.worker()
	}
	b.wg.Add(6)
	go b.ends.run(b.quit)
	go b.reader.run()
	go b.commits()
	go b.trim()
	go b.sample()
	go b.refresher()
	first := make(chan struct{})
	b.wg.Add(1)
	go b.own.run(first)
	select {
	case <-first:
	case <-ctx.Done():
		return fmt.Errorf("first lease round: %w", ctx.Err())
	}
	b.consuming.Store(true)
	owned, _ := b.own.status()
	b.log.Info("consuming", "stream", b.names.StreamOut(), "partitions", b.opts.Partitions, "owned", owned, "id", b.id)
	return nil
}

// since is the time since the bridge was built, from the monotonic clock:
// the unit of partition fences.
func (b *Bridge) since() int64 { return int64(time.Since(b.epoch)) }

// ID is this instance's name in the partition leases.
func (b *Bridge) ID() string { return b.id }

// Ready reports why the bridge cannot do its work, or nil: NATS connected,
// registry index loaded, consumer running.
func (b *Bridge) Ready() error {
	switch {
	case b.stopping.Load():
		return errors.New("stopping")
	case !b.nc.IsConnected():
		return fmt.Errorf("nats not connected (%s)", b.nc.Status())
	case !b.synced.Load():
		return errors.New("registry index not loaded")
	case !b.consuming.Load():
		return errors.New("not consuming")
	}
	// Past three quarters of the lease without a renewal the bridge has
	// fenced itself: whatever it owned is being given up.
	if owned, age := b.own.status(); age < 0 || age > b.opts.LeaseTTL*3/4 {
		return fmt.Errorf("cannot renew its membership in NATS (last renewal %v ago; %d partitions still held)", age.Round(time.Millisecond), owned)
	}
	return nil
}

// Stop stops reading, lets in-flight pushes finish within ShutdownTimeout
// (or ctx), commits every partition's position and releases its lease for
// the other bridges, and stops the API and ops endpoints. It is idempotent:
// later calls wait for the first.
func (b *Bridge) Stop(ctx context.Context) error {
	b.stopOnce.Do(func() {
		defer close(b.stopDone)
		b.stopErr = b.stop(ctx)
	})
	<-b.stopDone
	return b.stopErr
}

func (b *Bridge) stop(ctx context.Context) error {
	b.stopping.Store(true)
	close(b.stopCh)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, b.opts.ShutdownTimeout)
	defer cancel()
	for _, s := range b.subs {
		_ = s.Unsubscribe()
	}
	var errs []error
	if b.own != nil && b.consuming.Load() {
		// Hand every partition off: in-flight pushes finish, positions
		// are committed, the leases are released for the others.
		if err := b.own.leave(ctx); err != nil {
			b.log.Warn("shutdown timeout: cancelling in-flight pushes", "err", err)
			b.cancel()
			wait, c2 := context.WithTimeout(context.Background(), 5*time.Second)
			if err := b.own.leave(wait); err != nil {
				errs = append(errs, fmt.Errorf("%w; their next owners start from the last committed positions", err))
			}
			c2()
		}
	}
	b.consuming.Store(false)
	b.cancel()
	b.bgCancel()
	if b.own != nil {
		b.own.leaves.Wait()
	}
	close(b.quit)
	b.reader.close()
	b.wg.Wait()
	b.api.close()
	if b.nc.IsConnected() {
		if err := b.nc.FlushTimeout(2 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stop: flush: %w", err))
		}
	}
	if b.httpSrv != nil {
		hctx, c3 := context.WithTimeout(context.Background(), 2*time.Second)
		_ = b.httpSrv.Shutdown(hctx)
		c3()
		<-b.httpDone
	}
	b.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	return errors.Join(errs...)
}
