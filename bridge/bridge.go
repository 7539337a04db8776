package bridge

import (
	"cmp"
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
	"slices"
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

// pullExpiry is the lifetime of the consumers' pull requests. Short, because
// a stopped instance's requests linger at the server until they expire, and
// a hand-off waits them out before it NAKs (see part.stop).
const pullExpiry = time.Second

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

	kv   jetstream.KeyValue
	idx  *index
	subs []*nats.Subscription

	// Registry refreshes (see maybeRefresh): the bucket's TTL, the queue
	// of tokens to refresh and the tokens queued or being refreshed.
	regTTL     time.Duration
	refreshCh  chan string
	refreshMu  sync.Mutex
	refreshing map[string]struct{}

	// Partitioned work (see ownership.go, partition.go): this instance's
	// id in the leases, the base of monotonic fence times, the lease
	// keeper and the partitions held.
	id    string
	epoch time.Time
	own   *owner
	acks  *acker
	pm    *metrics.Partitions
	ready *readyQueue
	pmu   sync.Mutex
	parts map[int]*part
	// The held-bytes budget (limits.go), over every partition: bytes
	// held, and a signal that some were released; guarded by hmu.
	hmu       sync.Mutex
	heldBytes int64
	room      chan struct{}

	started   atomic.Bool
	stopping  atomic.Bool
	synced    atomic.Bool
	consuming atomic.Bool        // the lease keeper runs
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
	p, err := newPusher(hc, o.PushURL)
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
		idx:    newIndex(),
		ready:  newReadyQueue(),
		id:     o.ID,
		epoch:  time.Now(),
		pm:     metrics.NewPartitions(reg),
		parts:  map[int]*part{},
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

	if b.acks, err = newAcker(b.nc); err != nil {
		return fmt.Errorf("ack confirmations: %w", err)
	}
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
	b.wg.Add(3)
	go b.keepAlive()
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

func (b *Bridge) addPart(p *part) {
	b.pmu.Lock()
	b.parts[p.n] = p
	b.pmu.Unlock()
}

func (b *Bridge) removePart(p *part) {
	b.pmu.Lock()
	if b.parts[p.n] == p {
		delete(b.parts, p.n)
	}
	b.pmu.Unlock()
	b.pm.Backlog.DeleteLabelValues(strconv.Itoa(p.n))
}

// ownedParts returns the partitions held, in partition order.
func (b *Bridge) ownedParts() []*part {
	b.pmu.Lock()
	out := make([]*part, 0, len(b.parts))
	for _, p := range b.parts {
		out = append(out, p)
	}
	b.pmu.Unlock()
	slices.SortFunc(out, func(x, y *part) int { return cmp.Compare(x.n, y.n) })
	return out
}

// ID is this instance's name in the partition leases.
func (b *Bridge) ID() string { return b.id }

// Owned returns the partitions this bridge holds, in order.
func (b *Bridge) Owned() []int {
	var out []int
	for _, p := range b.ownedParts() {
		out = append(out, p.n)
	}
	return out
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
		// Hand every partition off: in-flight pushes finish, the rest is
		// NAKed in stream order, the leases are released for the others.
		if err := b.own.leave(ctx); err != nil {
			b.log.Warn("shutdown timeout: cancelling in-flight pushes", "err", err)
			b.cancel()
			wait, c2 := context.WithTimeout(context.Background(), 5*time.Second)
			if err := b.own.leave(wait); err != nil {
				errs = append(errs, fmt.Errorf("%w; JetStream redelivers their messages after the ack wait", err))
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
	if b.acks != nil {
		b.acks.stop()
	}
	close(b.quit)
	b.wg.Wait()
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
	n := 0
	for _, p := range b.ownedParts() {
		n += p.heldCount()
	}
	return n
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
	release // the item leaves its lane unresolved: its message is NAKed after the delay
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
	// A push never outlives the partition's fence: past it, the lease
	// may be another bridge's.
	ctx, cancel := context.WithDeadline(b.pushCtx, d.part.deadline())
	o := b.pusher.push(ctx, it.payload, it.d.tail)
	fenced := ctx.Err() != nil
	cancel()
	done := time.Now()
	b.m.InFlight.Dec()
	b.m.PushDuration.Observe(done.Sub(start).Seconds())
	b.pushes.inc(it.close, o.Class)
	if b.pushCtx.Err() != nil && o.Class != OK {
		// Cut short by shutdown: neither the message's nor the gateway's fault.
		return abandon, 0
	}
	if fenced && o.Class != OK {
		// Cut at the fence: not an attempt; the lane waits for the
		// renewal or the partition's drop.
		it.attempts--
		b.pm.Fenced.Inc()
		return retry, fenceRecheck
	}
	if d.redelivered && o.Class == OK {
		b.pm.Duplicates.Inc()
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
				b.forget(it.token, subjects.ReasonGone)
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
		b.forget(it.token, subjects.ReasonGone)
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
	h := nats.Header{}
	errText := "unknown"
	if o.Err != nil {
		errText = clipString(o.Err.Error(), 512)
	}
	h.Set(subjects.HeaderError, errText)
	h.Set(subjects.HeaderAttempts, strconv.Itoa(attempts))
	h.Set(subjects.HeaderStatus, strconv.Itoa(o.Status))
	h.Set(subjects.HeaderSubject, d.orig)
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
// disconnect event. Both are best effort (SPEC §3): failures are logged, the
// registry TTL is the safety net.
//
// A connection is announced once (subjects.DisconnectMsgID lets WS_IN drop
// what several messages, instances or the cleanup function announce again).
// A connection found gone is not announced at all once the index no longer
// holds it: every message queued for it is answered gone.
func (b *Bridge) forget(token, reason string) {
	held := b.idx.remove(token)
	if reason == subjects.ReasonGone && !held {
		b.log.Debug("gone connection already forgotten", "token", token)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.kv.Delete(ctx, token); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		b.log.Warn("registry delete failed", "token", token, "err", err)
	}
	if err := b.publishDisconnect(ctx, token, reason); err != nil {
		b.log.Warn("disconnect event not published", "token", token, "reason", reason, "err", err)
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
// reconnects and the owned partitions' backlog.
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
		if connected == 1 {
			// The owned partitions' consumers: the backlog and what is
			// held is this bridge's share.
			var pending, ackPending uint64
			for _, p := range b.ownedParts() {
				cons := p.consumer()
				if cons == nil {
					continue
				}
				ctx, cancel := context.WithTimeout(b.bgCtx, 2*time.Second)
				if info, err := cons.Info(ctx); err == nil {
					pending += info.NumPending
					ackPending += uint64(info.NumAckPending)
					b.pm.Backlog.WithLabelValues(strconv.Itoa(p.n)).Set(float64(info.NumPending))
				}
				cancel()
			}
			b.m.ConsumerPending.Set(float64(pending))
			b.m.AckPending.Set(float64(ackPending))
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
