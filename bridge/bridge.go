package bridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
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

// pullExpiry is the lifetime of the consumer's pull requests. Short, because
// a stopped or dead instance's requests linger at the server until they
// expire, and redeliveries made meanwhile can lose their order (see stop).
const pullExpiry = 2 * time.Second

// bigRegistry is the index size from which the memory used to load it is
// handed back to the OS at once (see watch).
const bigRegistry = 10000

// ErrStopped is returned by Start on a bridge that was stopped.
var ErrStopped = errors.New("bridge stopped")

// Bridge consumes the outbound stream and turns each command into reverse
// pushes to the gateway. Build one with New, then Run it (or Start and Stop).
type Bridge struct {
	opts   Options
	names  subjects.Names
	policy Policy
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	reg    *prometheus.Registry
	m      *metrics.Metrics
	pushes pushCounters
	pusher *pusher
	router *router

	kv   jetstream.KeyValue
	cons jetstream.Consumer
	cc   jetstream.ConsumeContext
	idx  *index
	subs []*nats.Subscription

	// Registry refreshes (see maybeRefresh): the bucket's TTL, the queue
	// of tokens to refresh and the tokens queued or being refreshed.
	regTTL     time.Duration
	refreshCh  chan string
	refreshMu  sync.Mutex
	refreshing map[string]struct{}

	mu    sync.Mutex
	lanes map[string]*lane
	held  map[uint64]*delivery
	ready *readyQueue
	// giveBack collects the messages to NAK when stopping; gaveBack is set
	// once they were.
	giveBack []jetstream.Msg
	gaveBack bool
	// The held-bytes budget (limits.go): bytes held, and a signal that
	// some were released. settled* remember recently acknowledged
	// sequences.
	heldBytes   int64
	room        chan struct{}
	settledSet  map[uint64]struct{}
	settledRing []uint64
	settledNext int

	started   atomic.Bool
	stopping  atomic.Bool
	synced    atomic.Bool
	consuming atomic.Bool
	stopCh    chan struct{}      // closed when Stop begins
	quit      chan struct{}      // closed when workers and loops must exit
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
		return nil, errors.New("bridge: a NATS connection is required")
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
	reg := deps.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
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
		m:      m,
		pushes: newPushCounters(m),
		pusher: p,
		router: newRouter(js, names, p.url),
		idx:    newIndex(),
		lanes:  map[string]*lane{},
		held:   map[uint64]*delivery{},
		ready:  newReadyQueue(),
		room:   make(chan struct{}, 1),

		refreshCh:  make(chan string, refreshQueue),
		refreshing: map[string]struct{}{},
		stopCh:     make(chan struct{}),
		quit:       make(chan struct{}),
		syncedCh:   make(chan struct{}),
		stopDone:   make(chan struct{}),
	}
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())
	b.pushCtx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// Metrics returns the bridge's instruments.
func (b *Bridge) Metrics() *metrics.Metrics { return b.m }

// Registry returns the registry /metrics serves.
func (b *Bridge) Registry() *prometheus.Registry { return b.reg }

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
		return errors.New("bridge already started")
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

	if err := b.serveAPI(); err != nil {
		return err
	}
	sub, err := b.nc.Subscribe(b.names.Inbound(), b.countInbound)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", b.names.Inbound(), err)
	}
	b.subs = append(b.subs, sub)

	cons, err := b.js.CreateOrUpdateConsumer(ctx, b.names.StreamOut(), jetstream.ConsumerConfig{
		Durable:       b.names.Consumer(),
		Description:   "wsbridge bridges: reverse pushes",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       b.opts.AckWait,
		MaxAckPending: b.opts.MaxAckPending,
		// Unlimited at the server: the bridge counts deliveries itself and
		// dead-letters, because a server-side MaxDeliver leaves the message
		// in the stream with only an advisory as trace.
		MaxDeliver:    -1,
		FilterSubject: b.names.Outbound(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		Replicas:      b.opts.Streams.Replicas,
	})
	if err != nil {
		return fmt.Errorf("consumer %s on %s: %w", b.names.Consumer(), b.names.StreamOut(), err)
	}
	b.cons = cons
	for i := 0; i < b.opts.Concurrency; i++ {
		b.wg.Add(1)
		go b.worker()
	}
	b.wg.Add(3)
	go b.keepAlive()
	go b.sample()
	go b.refresher()
	cc, err := cons.Consume(b.handle,
		// Bounded in bytes, not messages: 1000 messages of 1 MB would be
		// a gigabyte buffered (see pullBytes); the count is bounded by
		// MaxAckPending at the server.
		jetstream.PullMaxBytes(pullBytes(b.opts.MaxHeldBytes, b.nc.MaxPayload())),
		jetstream.PullExpiry(pullExpiry),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if b.stopping.Load() {
				return
			}
			b.log.Log(context.Background(), consumeErrLevel(err), "consume", "err", err)
		}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", b.names.Consumer(), err)
	}
	b.cc = cc
	b.consuming.Store(true)
	b.log.Info("consuming", "stream", b.names.StreamOut(), "consumer", b.names.Consumer())
	return nil
}

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
	case !b.consuming.Load() || b.cc == nil:
		return errors.New("consumer not running")
	}
	select {
	case <-b.cc.Closed():
		return errors.New("consumer closed")
	default:
	}
	return nil
}

// Stop stops consuming, lets in-flight pushes finish within ShutdownTimeout
// (or ctx), hands every message not pushed back to JetStream, and stops the
// API and ops endpoints. It is idempotent: later calls wait for the first.
func (b *Bridge) Stop(ctx context.Context) error {
	b.stopOnce.Do(func() {
		defer close(b.stopDone)
		b.stopErr = b.stop(ctx)
	})
	<-b.stopDone
	return b.stopErr
}

func (b *Bridge) stop(ctx context.Context) error {
	// Under b.mu: handle checks stopping and registers the message as held
	// in one critical section, so waitHeld below cannot miss a message
	// handle let through.
	b.mu.Lock()
	b.stopping.Store(true)
	b.mu.Unlock()
	close(b.stopCh)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, b.opts.ShutdownTimeout)
	defer cancel()
	if b.cc != nil {
		// Drain: no more pulls; buffered messages reach handle, which
		// keeps them to NAK in order at the end, so another instance gets
		// them without waiting for the ack wait.
		b.cc.Drain()
	}
	b.consuming.Store(false)
	for _, s := range b.subs {
		_ = s.Unsubscribe()
	}
	// Workers abandon lanes they pick up; in-flight pushes finish.
	drained := b.waitHeld(ctx)
	if !drained {
		b.log.Warn("shutdown timeout: cancelling in-flight pushes", "held", b.heldCount())
		b.cancel()
		wait, c2 := context.WithTimeout(context.Background(), 5*time.Second)
		drained = b.waitHeld(wait)
		c2()
	}
	b.cancel()
	close(b.quit)
	b.bgCancel()
	b.wg.Wait()
	if b.cc != nil {
		// Drain ends once the buffered messages went through handle.
		select {
		case <-b.cc.Closed():
		case <-time.After(2 * time.Second):
			b.cc.Stop()
		}
	}
	if b.giveBackCount() > 0 {
		// The server keeps this instance's pull requests until they expire
		// and, while it has any, a NAKed message it pops for one goes to
		// the back of its redelivery queue: wait them out so the NAKs
		// below are redelivered in stream order.
		select {
		case <-time.After(pullExpiry + 250*time.Millisecond):
		case <-ctx.Done():
		}
	}
	if n := b.giveBackAll(); n > 0 {
		b.log.Info("handed messages back to JetStream", "count", n)
	}
	var errs []error
	if !drained {
		errs = append(errs, fmt.Errorf("stop: %d messages still held; JetStream redelivers them after the ack wait", b.heldCount()))
	}
	// Acks and NAKs are fire-and-forget publishes: make sure they left.
	if b.nc.IsConnected() {
		if err := b.nc.FlushTimeout(2 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stop: flush acks: %w", err))
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

func (b *Bridge) heldCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.held)
}

// waitHeld waits until no message is held or ctx ends; it reports whether
// everything was settled.
func (b *Bridge) waitHeld(ctx context.Context) bool {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if b.heldCount() == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return b.heldCount() == 0
		case <-t.C:
		}
	}
}

// handle receives each outbound message from the consumer (one goroutine,
// in delivery order) and queues its pushes.
func (b *Bridge) handle(m jetstream.Msg) {
	meta, metaErr := m.Metadata()
	// The stopping check and the insert into held are one critical section
	// (stop sets stopping under b.mu too): otherwise stop's waitHeld could
	// see nothing held between them and finish while this message is
	// queued with no worker left to settle it.
	size := heldSize(m)
	b.mu.Lock()
	b.waitRoomLocked(size)
	if b.stopping.Load() {
		if !b.gaveBack {
			b.giveBack = append(b.giveBack, m)
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		_ = m.Nak()
		return
	}
	if metaErr != nil {
		b.mu.Unlock()
		// Not a JetStream message: nothing to ack, nothing to redeliver.
		b.log.Error("outbound message without metadata", "err", metaErr)
		return
	}
	d := &delivery{msg: m, seq: meta.Sequence.Stream, stamp: meta.Timestamp, touched: time.Now()}
	if _, dup := b.held[d.seq]; dup {
		// Redelivered while still held (the ack wait ran out under a long
		// push); the held copy will be acked.
		b.mu.Unlock()
		return
	}
	if meta.NumDelivered > 1 && b.settledLocked(d.seq) {
		// A copy of a message already pushed and acknowledged (see
		// settledLocked): acknowledge it again, push nothing.
		b.mu.Unlock()
		_ = m.Ack()
		return
	}
	b.held[d.seq] = d
	d.size = size
	b.heldBytes += size
	b.m.HeldBytes.Set(float64(b.heldBytes))
	b.mu.Unlock()

	subj, binary, err := parseOutbound(b.names, m.Subject(), m.Headers(), m.Data())
	if subj.Dir != subjects.Out {
		b.reject(d, subjects.KindInvalid, "", metrics.ReasonInvalid, err, 0)
		return
	}
	d.kind = subj.Kind
	if meta.NumDelivered > uint64(b.opts.MaxDeliver) {
		b.reject(d, subj.Kind, subj.Token, metrics.ReasonRetries,
			fmt.Errorf("delivered %d times without an outcome (max deliver %d)", meta.NumDelivered, b.opts.MaxDeliver), int(meta.NumDelivered))
		return
	}
	if err != nil {
		b.reject(d, subj.Kind, subj.Token, metrics.ReasonInvalid, err, 0)
		return
	}
	d.body, d.binary = m.Data(), binary
	var tokens []string
	switch subj.Kind {
	case subjects.KindSend, subjects.KindClose:
		// The common case: one item, carried by the delivery itself.
		d.remaining.Store(1)
		d.one = item{d: d, token: subj.Token, close: subj.Kind == subjects.KindClose}
		b.enqueue(&d.one)
		return
	case subjects.KindBroadcast:
		tokens = b.idx.all(parseExclude(m.Headers().Get(subjects.HeaderExclude)))
	case subjects.KindGroup:
		tokens = b.idx.group(subj.Name, parseExclude(m.Headers().Get(subjects.HeaderExclude)))
	case subjects.KindUser:
		tokens = b.idx.user(subj.Name, parseExclude(m.Headers().Get(subjects.HeaderExclude)))
	}
	if len(tokens) == 0 {
		b.log.Debug("fan-out to no connection", "subject_kind", subj.Kind)
		d.remaining.Store(1)
		b.settle(d)
		return
	}
	d.remaining.Store(int64(len(tokens)))
	d.shareTail()
	for _, t := range tokens {
		b.enqueue(&item{d: d, token: t})
	}
}

// reject dead-letters a whole message that will never be pushed.
func (b *Bridge) reject(d *delivery, kind subjects.Kind, token, reason string, cause error, attempts int) {
	d.remaining.Store(1)
	err := b.deadLetter(d, kind, token, reason, Outcome{Err: cause}, attempts)
	if err != nil && !transientPublishErr(err) {
		// Refused, not unavailable: the metadata alone, or the log line.
		if err = b.deadLetterAs(d, kind, token, reason, Outcome{Err: cause}, attempts, true); err != nil && !transientPublishErr(err) {
			b.log.Error("dead letter refused; lost", "seq", d.seq, "kind", kind, "reason", reason,
				"subject", clipString(d.msg.Subject(), 256), "cause", cause, "err", err)
			err = nil
		}
	}
	if err != nil {
		b.log.Error("dead letter failed; message returns later", "seq", d.seq, "err", err)
		d.aborted.Store(true)
		d.nakDelay.Store(int64(b.opts.BackoffMax))
	}
	b.settle(d)
}

type attemptResult int

const (
	resolved attemptResult = iota
	retry
	abandon
)

// attempt pushes one item once and acts on the decision.
func (b *Bridge) attempt(it *item) (attemptResult, time.Duration) {
	d := it.d
	if it.dl != nil {
		// The outcome is known; only its dead letter is left to publish.
		return b.finish(it)
	}
	if it.payload == nil {
		p, err := b.payload(it)
		if err != nil {
			it.dl = &pendingDL{reason: metrics.ReasonInvalid, o: Outcome{Err: err}}
			return b.finish(it)
		}
		it.payload = p
	}
	if it.close && it.attempts == 0 {
		b.markClosing(it.token)
	}
	it.attempts++
	b.m.InFlight.Inc()
	start := time.Now()
	o := b.push(it)
	done := time.Now()
	b.m.InFlight.Dec()
	b.m.PushDuration.Observe(done.Sub(start).Seconds())
	b.pushes.inc(it.close, o.Class)
	if b.pushCtx.Err() != nil && o.Class != OK {
		// Cut short by shutdown: neither the message's nor the gateway's fault.
		return abandon, 0
	}
	dec := Decide(o, it.attempts, b.policy, rand.Float64())
	switch dec.Action {
	case Ack:
		b.m.DeliveryLag.Observe(done.Sub(d.stamp).Seconds())
		if it.close {
			b.forget(it.token, subjects.ReasonClosed)
		} else {
			b.maybeRefresh(it.token, done)
		}
		return resolved, 0
	case Retry:
		b.m.Retries.Inc()
		b.log.Debug("push failed, will retry", "kind", d.kind, "token", it.token, "status", o.Status,
			"attempt", it.attempts, "delay", dec.Delay, "err", o.Err)
		return retry, dec.Delay
	}
	it.dl = &pendingDL{reason: dec.Reason, o: o, attempts: it.attempts, gone: dec.Gone}
	return b.finish(it)
}

// pendingDL is the dead letter an item's outcome calls for.
type pendingDL struct {
	reason   string
	o        Outcome
	attempts int  // push attempts made
	gone     bool // forget the connection once dead-lettered
	tries    int  // failed publishes of the dead letter
	minimal  bool // publish the metadata only (the full one was refused)
}

// finish publishes the item's dead letter. When the publish fails, the item
// stays at the head of its lane and the publish is retried after a backoff,
// like a transient push failure, so later messages to the connection keep
// waiting behind it (abandoning the lane would let newer messages to the
// connection start a new lane and overtake it). A stop gives the lane back
// to JetStream as usual.
func (b *Bridge) finish(it *item) (attemptResult, time.Duration) {
	p := it.dl
	if err := b.deadLetterAs(it.d, it.d.kind, it.token, p.reason, p.o, p.attempts, p.minimal); err != nil {
		p.tries++
		if !transientPublishErr(err) {
			// Retrying gives the same answer. Keep the metadata only
			// (subject, reason, status, sizes); when even that is refused,
			// the log line and the counter are all that is left, and the
			// lane moves on.
			if !p.minimal {
				p.minimal = true
				return b.finish(it)
			}
			b.log.Error("dead letter refused; lost", "seq", it.d.seq, "token", it.token, "kind", it.d.kind,
				"reason", p.reason, "status", p.o.Status, "subject", clipString(it.d.msg.Subject(), 256), "err", err)
			it.dl = nil
			if p.gone {
				b.forget(it.token, disconnectReason(p.o))
			} else if it.close {
				b.unmarkClosing(it.token)
			}
			return resolved, 0
		}
		delay := b.policy.Backoff(p.tries, rand.Float64())
		b.log.Error("dead letter failed; retrying", "seq", it.d.seq, "token", it.token,
			"tries", p.tries, "delay", delay, "err", err)
		return retry, delay
	}
	it.dl = nil
	if p.gone {
		b.forget(it.token, disconnectReason(p.o))
	} else if it.close {
		b.unmarkClosing(it.token)
	}
	return resolved, 0
}

// payload builds the reverse-push body of SPEC §1. It appends the JSON
// by hand into one right-sized buffer: encoding/json's reflection cost a
// tenth of the push path's CPU. Strings that need escaping (rare: ids are
// base64url and most text is plain) go through encoding/json, so the body is
// byte for byte what json.Marshal gives for the same fields, except that a
// send always carries "data" (subjects.GatewayWebSocket omits it when empty).
//
// The body is the returned head followed by it.d.tail. A fan-out's tail
// (everything after the connection id: data type and data) is built once
// per message by shareTail, so its items hold only their head rather than
// a copy of the data each; otherwise the tail is nil and head is the body.
func (b *Bridge) payload(it *item) ([]byte, error) {
	id, err := subjects.ConnID(it.token)
	if err != nil {
		return nil, err
	}
	if it.close {
		buf := make([]byte, 0, len(`{"websocket":{"action":"closing","secConnectionID":""}}`)+len(id))
		buf = append(buf, `{"websocket":{"action":"`+subjects.ActionClosing+`","secConnectionID":`...)
		buf = appendJSONString(buf, id)
		return append(buf, "}}"...), nil
	}
	n := len(sendHead) + len(id) + 2
	if it.d.tail == nil {
		n += sendTailLen(it.d)
	}
	buf := make([]byte, 0, n)
	buf = append(buf, sendHead...)
	buf = appendJSONString(buf, id)
	if it.d.tail == nil {
		buf = appendSendTail(buf, it.d)
	}
	return buf, nil
}

// sendHead starts a send's body; the connection id follows.
const sendHead = `{"websocket":{"action":"` + subjects.ActionDataSend + `","secConnectionID":`

// shareTail builds the body tail the items of a fan-out share.
func (d *delivery) shareTail() {
	d.tail = appendSendTail(make([]byte, 0, sendTailLen(d)), d)
}

func sendTailLen(d *delivery) int {
	dataLen := len(d.body)
	if d.binary {
		dataLen = base64.StdEncoding.EncodedLen(len(d.body))
	}
	return len(`,"dataType":"binary","data":""}}`) + dataLen
}

// appendSendTail appends what follows the connection id in a send's body.
func appendSendTail(buf []byte, d *delivery) []byte {
	dataType := subjects.DataText
	if d.binary {
		dataType = subjects.DataBinary
	}
	buf = append(buf, `,"dataType":"`...)
	buf = append(buf, dataType...)
	buf = append(buf, '"')
	// Always "data", "" for an empty send (SPEC §1 body), although the
	// struct's tag is omitempty.
	buf = append(buf, `,"data":`...)
	if d.binary {
		// Base64 never needs escaping.
		buf = append(buf, '"')
		buf = base64.StdEncoding.AppendEncode(buf, d.body)
		buf = append(buf, '"')
	} else {
		buf = appendJSONString(buf, string(d.body))
	}
	return append(buf, "}}"...)
}

// appendJSONString appends s as a JSON string exactly as encoding/json
// writes it: verbatim when it holds only printable ASCII that needs no
// escape, through json.Marshal otherwise (quotes, backslashes, control
// characters, HTML-sensitive <>&, and all non-ASCII, which Marshal checks
// for invalid UTF-8 and U+2028/U+2029).
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(buf, q...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// deadLetter republishes the message, for one connection, to the dead-letter
// stream with why it failed, and waits for the stream's ack. The original
// Nats-Msg-Id is replaced: a fan-out's dead letters share it and would be
// de-duplicated into one; the new id de-duplicates redeliveries instead.
func (b *Bridge) deadLetter(d *delivery, kind subjects.Kind, token, reason string, o Outcome, attempts int) error {
	return b.deadLetterAs(d, kind, token, reason, o, attempts, false)
}

// deadLetterAs is deadLetter; minimal keeps only the Ws-* metadata and
// connection id, without the original body and headers.
func (b *Bridge) deadLetterAs(d *delivery, kind subjects.Kind, token, reason string, o Outcome, attempts int, minimal bool) error {
	if _, err := subjects.ConnID(token); token != "" && err != nil {
		token = "" // never a subject from a bad token: P.dlq.<kind>
	}
	h := nats.Header{}
	errText := "unknown"
	if o.Err != nil {
		errText = clipString(o.Err.Error(), 512)
	}
	h.Set(subjects.HeaderError, errText)
	h.Set(subjects.HeaderAttempts, strconv.Itoa(attempts))
	h.Set(subjects.HeaderStatus, strconv.Itoa(o.Status))
	h.Set(subjects.HeaderSubject, d.msg.Subject())
	h.Set(subjects.HeaderReason, reason)
	h.Set(subjects.HeaderMsgID, "dlq-"+strconv.FormatUint(d.seq, 10)+"-"+token)
	if token != "" {
		if id, err := subjects.ConnID(token); err == nil {
			h.Set(subjects.HeaderConnID, id)
		}
	}
	subj := b.names.DeadLetter(kind, token)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Cut to fit: a body just under max_payload plus the headers would
	// not, and its publish would fail forever.
	maxPayload := b.nc.MaxPayload()
	if minimal {
		maxPayload = 0 // nothing of the original fits
	}
	dl := deadLetterMsg(subj, d.msg.Data(), d.msg.Headers(), h, maxPayload)
	if _, err := b.js.PublishMsg(ctx, dl); err != nil {
		b.m.DeadLetterFailures.Inc()
		return fmt.Errorf("publish dead letter %s: %w", subj, err)
	}
	b.m.DeadLetters.WithLabelValues(reason).Inc()
	b.log.Warn("dead letter", "kind", kind, "token", token, "reason", reason, "status", o.Status,
		"attempts", attempts, "seq", d.seq, "err", errText)
	return nil
}

// forget deletes a connection from the registry and publishes its
// disconnect event, if the record is still there: whoever deletes the
// record announces the disconnect (subjects.Names.Forget), so a connection
// gets one event however many messages, instances or cleanup invocations
// see its end. Best effort (SPEC §3): failures are logged, the registry TTL
// is the safety net.
func (b *Bridge) forget(token, reason string) {
	if held := b.idx.remove(token); !held && (reason == subjects.ReasonGone || reason == subjects.ReasonLost) {
		// Every message queued for a gone connection is answered gone;
		// the first one forgot it (the index follows the registry).
		b.log.Debug("gone connection already forgotten", "token", token)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	announced, err := b.names.Forget(ctx, b.js, b.kv, token, reason, time.Now())
	switch {
	case err != nil:
		b.log.Warn("disconnect not recorded", "token", token, "reason", reason, "err", err)
	case announced == "":
		b.log.Debug("connection already forgotten", "token", token, "reason", reason)
	}
}

func (b *Bridge) publishDisconnect(ctx context.Context, token, reason string) error {
	m, err := b.names.DisconnectMsg(token, reason, time.Now())
	if err != nil {
		return err
	}
	if _, err := b.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish %s: %w", m.Subject, err)
	}
	return nil
}

// watch keeps the index current from the registry bucket.
func (b *Bridge) watch(w jetstream.KeyWatcher) {
	defer b.wg.Done()
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-b.bgCtx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if b.synced.CompareAndSwap(false, true) {
					if b.idx.size() >= bigRegistry {
						// Loading a large registry passes every record
						// through the heap once (100,000 records: the
						// heap peaks near 80 MB for a 20 MB index); give
						// those pages back now rather than over minutes
						// of background scavenging.
						debug.FreeOSMemory()
					}
					close(b.syncedCh)
				}
				b.m.RegistryConnections.Set(float64(b.idx.size()))
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValuePut:
				if _, err := subjects.ConnID(e.Key()); err != nil {
					// Not written by wsbridge: a fan-out would build
					// subjects from it. Left out, and said once.
					b.log.Warn("registry key is not a connection token; not indexed", "err", err)
					continue
				}
				b.idx.putAt(e.Key(), e.Value(), e.Created())
			case jetstream.KeyValueDelete:
				b.idx.remove(e.Key())
			case jetstream.KeyValuePurge:
				// The registry's TTL expiry shows as a purge marker (the
				// bridge and the functions delete, never purge). So does
				// the age-out of a delete marker, for a connection that
				// already left: only a record the index still held has
				// expired. Every instance sees it; the Nats-Msg-Id makes
				// WS_IN store one event.
				if b.idx.remove(e.Key()) && b.synced.Load() {
					ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
					err := b.publishDisconnect(ctx, e.Key(), subjects.ReasonExpired)
					cancel()
					if err != nil {
						b.log.Warn("expired disconnect not published", "token", e.Key(), "err", err)
					}
				}
			}
			if b.synced.Load() {
				b.m.RegistryConnections.Set(float64(b.idx.size()))
			}
		}
	}
}

// countInbound counts inbound events by type; bounded label values only.
func (b *Bridge) countInbound(m *nats.Msg) {
	s, err := b.names.Parse(m.Subject)
	if err != nil || s.Dir != subjects.In {
		b.m.InboundEvents.WithLabelValues(metrics.EventInvalid).Inc()
		return
	}
	b.m.InboundEvents.WithLabelValues(string(s.Kind)).Inc()
}

// sample refreshes the gauges that come from elsewhere: NATS state,
// reconnects and the consumer's backlog.
func (b *Bridge) sample() {
	defer b.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		connected := 0.0
		if b.nc.IsConnected() {
			connected = 1
		}
		b.m.NATSConnected.Set(connected)
		if r := b.nc.Stats().Reconnects; r > b.lastRecon {
			b.m.NATSReconnects.Add(float64(r - b.lastRecon))
			b.lastRecon = r
		}
		if b.cons != nil && connected == 1 {
			ctx, cancel := context.WithTimeout(b.bgCtx, 2*time.Second)
			if info, err := b.cons.Info(ctx); err == nil {
				b.m.ConsumerPending.Set(float64(info.NumPending))
				b.m.AckPending.Set(float64(info.NumAckPending))
			}
			cancel()
		}
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
	}
}

// refreshQueue bounds the tokens waiting for a registry refresh; more are
// dropped (the next push to them asks again).
const refreshQueue = 1024

// registryTTL is the registry TTL the options ask for, with the default of
// subjects.StreamOptions.
func registryTTL(d time.Duration) time.Duration {
	if d <= 0 {
		return 24 * time.Hour
	}
	return d
}

// maybeRefresh queues a refresh of token's registry record when a push to
// it just succeeded and the record was written more than half the TTL ago:
// a connection that keeps receiving stays registered, while nothing else
// rewrites its record. Off the push path: one goroutine does the KV round
// trips, with at most one refresh queued or in flight per token.
func (b *Bridge) maybeRefresh(token string, now time.Time) {
	written, ok := b.idx.written(token)
	if !ok || written.IsZero() || now.Sub(written) < b.regTTL/2 {
		return
	}
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	if _, busy := b.refreshing[token]; busy {
		return
	}
	select {
	case b.refreshCh <- token:
		b.refreshing[token] = struct{}{}
	default: // full: a later push asks again
	}
}

// refresher rewrites the records maybeRefresh queues.
func (b *Bridge) refresher() {
	defer b.wg.Done()
	for {
		select {
		case <-b.bgCtx.Done():
			return
		case token := <-b.refreshCh:
			b.refresh(token)
			b.refreshMu.Lock()
			delete(b.refreshing, token)
			b.refreshMu.Unlock()
		}
	}
}

// refresh rewrites token's record unchanged, which restarts its TTL. The
// update names the revision read, so a delete or update made meanwhile (a
// disconnect, a group change, another instance's refresh) wins.
func (b *Bridge) refresh(token string) {
	ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
	defer cancel()
	e, err := b.kv.Get(ctx, token)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
			b.log.Debug("registry refresh: read failed", "token", token, "err", err)
		}
		return
	}
	if time.Since(e.Created()) < b.regTTL/2 {
		b.idx.touch(token, e.Created()) // rewritten meanwhile
		return
	}
	if _, err := b.kv.Update(ctx, token, e.Value(), e.Revision()); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			b.log.Debug("registry refresh failed", "token", token, "err", err)
		}
		return
	}
	b.idx.touch(token, time.Now())
}
