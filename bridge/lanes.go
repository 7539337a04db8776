package bridge

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// Ordering design.
//
// Every push belongs to a lane, one per connection token. A lane is a FIFO of
// items in the order JetStream delivered their messages (stream order, since
// the Consume callback runs on one goroutine), and at most one worker works
// on a lane at a time, so pushes to one connection leave in publish order
// while Concurrency workers push to different connections in parallel.
//
// A transient failure does not NAK the message: the lane keeps its head and
// is put back on the ready queue after the backoff delay, holding back the
// later messages of that connection only (not of other connections, and not
// a worker: no goroutine sleeps on a retry but a timer). A NAK would let
// JetStream deliver later messages of the same connection before the retried
// one. The delivery stays unacknowledged meanwhile; a keep-alive sends
// InProgress so AckWait does not expire under it.
//
// Fan-out messages (broadcast, group, user) become one item per connection,
// in each connection's lane, so a broadcast between two sends to a connection
// arrives between them; the message is acknowledged when all its items are
// resolved (pushed or individually dead-lettered), so one failing connection
// neither redoes the fan-out nor holds the others back.
//
// An outcome that cannot be recorded yet (the dead-letter publish fails) is
// retried inside the lane with the same backoff as a transient push failure,
// so it keeps its place too.
//
// Across bridges (see ownership.go): a connection's messages all live in one
// partition, which one bridge works at a time. A message is acknowledged,
// and the acknowledgement confirmed by the server, before the next message
// of its connection is pushed; a fan-out's lanes wait until the fan-out is
// acknowledged. So whatever a bridge leaves unacknowledged when it dies is,
// per connection, at most its latest push and what followed, and the next
// owner gets all of it, in stream order, before anything newer. When a
// partition is handed off (stop, rebalance), its lanes are abandoned and
// their messages NAKed in stream order; when it is dropped (lease lost or
// unconfirmed), they are let go and expire after the ack wait.

// delivery is one JetStream message being handled by one partition.
type delivery struct {
	msg     jetstream.Msg
	part    *part
	seq     uint64 // stream sequence
	stamp   time.Time
	orig    string // the subject the publisher used
	kind    subjects.Kind
	body    []byte
	binary  bool
	fanout  bool      // broadcast, group or user: its lanes wait for its ack
	tail    []byte    // a fan-out's push body after the connection id, shared by its items (see payload)
	touched time.Time // last ack-deadline extension; guarded by part.mu
	size    int64     // bytes counted against MaxHeldBytes; guarded by Bridge.hmu

	redelivered bool // JetStream delivered it before: a push may repeat one

	one item // the item of a send or close (saves an allocation)

	remaining atomic.Int64 // items not yet resolved
	aborted   atomic.Bool  // an item was abandoned: NAK instead of ack
	nakDelay  atomic.Int64 // delay of the NAK, nanoseconds

	// Guarded by part.mu: set once acknowledged (or let go); the lanes
	// that pushed an item of it wait for that before their next push.
	settled bool
	waiters []*lane
}

// item is one push to one connection.
type item struct {
	d        *delivery
	token    string
	close    bool
	attempts int
	fenced   bool       // counted once as withheld by the fence
	payload  []byte     // reverse-push body (head, before d.tail), built on first attempt
	dl       *pendingDL // set once the outcome calls for a dead letter not yet published
}

// lane is the FIFO of one connection's items; guarded by part.mu.
type lane struct {
	part  *part
	token string
	q     []*item
}

// readyQueue is an unbounded FIFO of lanes with work. Unbounded because both
// the Consume callback and the workers add to it: a bounded channel could
// fill with the callback's lanes while every worker waits to put one back.
// Its length is bounded by the number of lanes, itself bounded by
// MaxAckPending times the fan-out size.
type readyQueue struct {
	mu     sync.Mutex
	q      []*lane
	head   int
	notify chan struct{}
}

func newReadyQueue() *readyQueue { return &readyQueue{notify: make(chan struct{}, 1)} }

func (r *readyQueue) push(l *lane) {
	r.mu.Lock()
	r.q = append(r.q, l)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// pop returns the next lane, waiting until one is ready or quit is closed
// (then nil).
func (r *readyQueue) pop(quit <-chan struct{}) *lane {
	for {
		r.mu.Lock()
		if r.head < len(r.q) {
			l := r.q[r.head]
			r.q[r.head] = nil
			r.head++
			more := r.head < len(r.q)
			if !more {
				r.q, r.head = r.q[:0], 0
			} else if r.head > 1024 && r.head*2 > len(r.q) {
				r.q, r.head = append(r.q[:0:0], r.q[r.head:]...), 0
			}
			r.mu.Unlock()
			if more {
				// Pass the wake-up on: another worker may be idle.
				select {
				case r.notify <- struct{}{}:
				default:
				}
			}
			return l
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-quit:
			return nil
		}
	}
}

// enqueue appends it to its connection's lane, making the lane ready when
// it was idle.
func (b *Bridge) enqueue(it *item) {
	p := it.d.part
	p.mu.Lock()
	l := p.lanes[it.token]
	if l != nil {
		// Busy, ready or waiting lane: whoever holds it will get to this item.
		l.q = append(l.q, it)
		p.mu.Unlock()
		return
	}
	l = &lane{part: p, token: it.token, q: []*item{it}}
	p.lanes[it.token] = l
	p.mu.Unlock()
	b.ready.push(l)
}

// worker pushes lanes' head items until quit is closed.
func (b *Bridge) worker() {
	defer b.wg.Done()
	for {
		l := b.ready.pop(b.quit)
		if l == nil {
			return
		}
		b.work(l)
	}
}

// fenceRecheck is how soon a lane whose partition lease is unconfirmed looks
// again: the renewal may come through, or the partition is dropped.
const fenceRecheck = 100 * time.Millisecond

func (b *Bridge) work(l *lane) {
	p := l.part
	p.mu.Lock()
	it := l.q[0]
	p.mu.Unlock()
	if p.stopping.Load() {
		// Handed off or dropped: the lane's messages are the next
		// owner's (Decide: release).
		b.abandonLane(l, Decide(Outcome{Class: Abandoned}, it.attempts, b.policy, 0).Delay)
		return
	}
	if !p.valid() {
		// Fenced: the lease may be someone else's by now. Withhold the
		// push; a renewal resumes the lane, a drop abandons it.
		if !it.fenced {
			it.fenced = true
			b.pm.Fenced.Inc()
		}
		b.later(l, fenceRecheck)
		return
	}
	res, delay := b.attempt(it)
	switch res {
	case resolved:
		// The last item of a delivery acknowledges it, and the lane
		// waits until the server confirmed that: a crash can then only
		// repeat the connection's latest push, never bring back an
		// older one. A fan-out is acknowledged once its other
		// connections are done too; until then this connection waits
		// (were its next message pushed and acked first, a crash would
		// redeliver the fan-out after it).
		p.mu.Lock()
		l.q[0] = nil
		l.q = l.q[1:]
		it.d.waiters = append(it.d.waiters, l)
		p.mu.Unlock()
		b.resolve(it, false, 0)
	case retry:
		if p.stopping.Load() {
			b.abandonLane(l, delay)
			return
		}
		b.later(l, delay)
	case abandon:
		b.abandonLane(l, delay)
	}
}

// later puts the lane back on the ready queue after delay (at once when its
// partition stops: work() then abandons it).
func (b *Bridge) later(l *lane, delay time.Duration) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-l.part.quit:
		case <-b.quit:
			return
		}
		b.ready.push(l)
	}()
}

// wake resumes the lanes that waited for d's acknowledgement.
func (b *Bridge) wake(d *delivery) {
	p := d.part
	p.mu.Lock()
	waiters := d.waiters
	d.waiters = nil
	var ready []*lane
	for _, l := range waiters {
		if len(l.q) == 0 {
			if p.lanes[l.token] == l {
				delete(p.lanes, l.token)
			}
			continue
		}
		ready = append(ready, l)
	}
	p.mu.Unlock()
	for _, l := range ready {
		b.ready.push(l)
	}
}

// abandonLane gives every item of the lane back (see settle), in lane
// order, and forgets the lane.
func (b *Bridge) abandonLane(l *lane, delay time.Duration) {
	p := l.part
	p.mu.Lock()
	items := l.q
	l.q = nil
	if p.lanes[l.token] == l {
		delete(p.lanes, l.token)
	}
	p.mu.Unlock()
	for _, it := range items {
		b.resolve(it, true, delay)
	}
}

// resolve marks one item done; the last item of a delivery settles it.
func (b *Bridge) resolve(it *item, abandoned bool, delay time.Duration) {
	d := it.d
	if abandoned {
		d.aborted.Store(true)
		if int64(delay) > d.nakDelay.Load() {
			d.nakDelay.Store(int64(delay))
		}
	}
	if d.remaining.Add(-1) == 0 {
		b.settle(d)
	}
}

// ackTimeout bounds one confirmed acknowledgement.
const ackTimeout = 5 * time.Second

// settle acks or NAKs a delivery whose items are all resolved, then wakes
// the lanes waiting for it. The ack is confirmed by the server (retried
// while the partition's lease holds) before the delivery counts as settled:
// its lanes must not push their next message before. A partition that was
// dropped lets its messages go without a word: they are the next owner's,
// after the ack wait.
func (b *Bridge) settle(d *delivery) {
	p := d.part
	p.mu.Lock()
	switch {
	case p.dropped.Load():
		p.mu.Unlock()
		b.settled(d)
		return
	case d.aborted.Load() && p.stopping.Load() && !p.gaveBack:
		// Handing off: NAK everything at the end, in stream order (see
		// giveBackAll).
		p.giveBack = append(p.giveBack, d.msg)
		p.mu.Unlock()
		b.settled(d)
		return
	}
	p.mu.Unlock()
	if d.aborted.Load() {
		if err := d.msg.NakWithDelay(time.Duration(d.nakDelay.Load())); err != nil {
			b.log.Warn("nak failed; the message returns after the ack wait", "seq", d.seq, "err", err)
		}
		b.settled(d)
		return
	}
	b.ackConfirmed(d, 1)
}

// settled marks d done, forgets it and resumes the lanes waiting for it.
func (b *Bridge) settled(d *delivery) {
	p := d.part
	p.mu.Lock()
	delete(p.held, d.seq)
	if !d.aborted.Load() && !p.dropped.Load() {
		p.markSettledLocked(d.seq)
	}
	d.settled = true
	size := d.size
	d.size = 0
	p.mu.Unlock()
	b.release(size)
	b.wake(d)
}

// ackConfirmed acknowledges d, asking the server to confirm; on failure it
// tries again while the partition is ours.
func (b *Bridge) ackConfirmed(d *delivery, try int) {
	b.acks.ack(d.msg.Reply(), func(err error) {
		if err == nil {
			b.settled(d)
			return
		}
		if d.part.dropped.Load() || b.since() >= d.part.fence.Load() || b.stopping.Load() && b.pushCtx.Err() != nil {
			// The lease is not confirmed either. Were it renewed, the
			// next push could overtake this message's redelivery:
			// the partition is dropped and taken over afresh, which
			// waits out the ack wait, so the message comes back first.
			d.part.broken.Store(true)
			b.log.Warn("ack not confirmed; the partition is given up and the message comes back to its next owner", "seq", d.seq, "partition", d.part.n, "err", err)
			b.settled(d)
			return
		}
		if try == 1 || try%50 == 0 {
			b.log.Warn("ack not confirmed; retrying", "seq", d.seq, "partition", d.part.n, "tries", try, "err", err)
		}
		time.AfterFunc(fenceRecheck, func() { b.ackConfirmed(d, try+1) })
	})
}

func streamSeq(m jetstream.Msg) uint64 {
	meta, err := m.Metadata()
	if err != nil {
		return 0
	}
	return meta.Sequence.Stream
}

// keepAlive extends the ack deadline of held messages before AckWait runs
// out, partition by partition (see part.extendHeld).
func (b *Bridge) keepAlive() {
	defer b.wg.Done()
	// A quarter of AckWait leaves three quarters of margin for a late tick
	// on a busy machine: a message whose deadline passes while held is
	// redelivered with a new timestamp and would fall out of order with the
	// ones extended on time.
	every := b.opts.AckWait / 4
	t := time.NewTicker(every)
	defer t.Stop()
	var buf []*delivery
	for {
		select {
		case <-b.quit:
			return
		case now := <-t.C:
			for _, p := range b.ownedParts() {
				buf = p.extendHeld(now, every, buf)
			}
		}
	}
}
