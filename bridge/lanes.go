package bridge

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// Ordering design.
//
// Every push belongs to a lane, one per connection token. A lane is a FIFO of
// items in stream order (the log reader hands commands on in stream order),
// and at most one worker works on a lane at a time, so pushes to one
// connection leave in publish order while Concurrency workers push to
// different connections in parallel.
//
// A transient failure keeps the item at the head of its lane, which is put
// back on the ready queue after the backoff delay: later messages of that
// connection wait, other connections do not, and no goroutine sleeps on a
// retry but a timer. An outcome that cannot be recorded yet (the dead-letter
// publish fails) is retried the same way, so it keeps its place too.
//
// Fan-out commands (broadcast, group, user) become one item per connection,
// in each connection's lane, so a broadcast between two sends to a
// connection arrives between them. A command is resolved once all its items
// are (pushed or individually dead-lettered); one failing connection neither
// redoes the fan-out nor holds the others back.
//
// Across bridges (see ownership.go): a connection's commands all live in one
// partition, which one bridge works at a time, and the partition's position
// in the log (what it resolved) is committed every CommitInterval and at
// every hand-off. A bridge that dies leaves at most the pushes made since
// its last commit to be made again by the next owner, in stream order; every
// push carries its stream sequence (Ws-Seq), and wsbridge gateway drops a
// repeat. A hand-off commits after its last push, so the next owner repeats
// nothing.

// delivery is one command of the log being handled by one partition.
type delivery struct {
	msg    jetstream.Msg
	part   *part
	seq    uint64 // stream sequence
	stamp  time.Time
	orig   string // the subject the publisher used
	kind   subjects.Kind
	body   []byte
	binary bool
	tail   []byte // a fan-out's push body after the connection id, shared by its items (see payload)
	size   int64  // bytes counted against the partition's share of MaxHeldBytes

	redelivered bool // a previous owner may have pushed it already

	one   item    // the item of a send or close (saves an allocation)
	items []*item // a fan-out's items, one per target in the partition

	remaining atomic.Int64 // items not yet resolved
	done      bool         // resolved; guarded by part.mu
}

// item is one push to one connection.
type item struct {
	d        *delivery
	token    string
	close    bool
	attempts int
	fenced   bool       // counted once as withheld by the fence
	done     bool       // pushed or dead-lettered; guarded by part.mu
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
	// Counted before the stopping check: a stop that finds no push in
	// flight is sure none starts after it.
	p.pushing.Add(1)
	defer p.pushing.Add(-1)
	p.mu.Lock()
	if len(l.q) == 0 {
		p.mu.Unlock()
		return
	}
	it := l.q[0]
	p.mu.Unlock()
	if p.stopping.Load() {
		// Handed off or dropped: the lane's commands are the next
		// owner's, from the position committed.
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
		p.mu.Lock()
		it.done = true
		l.q[0] = nil
		l.q = l.q[1:]
		more := len(l.q) > 0
		if !more && p.lanes[l.token] == l {
			delete(p.lanes, l.token)
		}
		p.mu.Unlock()
		b.resolve(it)
		if more {
			b.ready.push(l)
		}
	case retry:
		if p.stopping.Load() {
			return
		}
		b.later(l, delay)
	}
}

// later puts the lane back on the ready queue after delay (at once when its
// partition stops: work() then lets it go).
func (b *Bridge) later(l *lane, delay time.Duration) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-l.part.quit:
			return
		case <-b.quit:
			return
		}
		b.ready.push(l)
	}()
}

// resolve marks one item done; the last item of a command resolves it.
func (b *Bridge) resolve(it *item) {
	if it.d.remaining.Add(-1) == 0 {
		it.d.part.resolved(it.d)
	}
}

type attemptResult int

const (
	resolved attemptResult = iota
	retry
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
			o := Outcome{Class: Invalid, Err: err}
			it.dl = &pendingDL{reason: Decide(o, it.attempts, b.policy, 0).Reason, o: o}
			return b.finish(it)
		}
		it.payload = p
	}
	if e, ok := b.gone.seen(it.token, time.Now()); ok {
		// Answered gone before: nothing to push to. The first answer
		// forgot the connection; this only records the dead letter.
		o := Outcome{Class: Gone, Status: e.status,
			Err: fmt.Errorf("gateway HTTP %d: connection gone (answered at %s, not pushed again)", e.status, e.at.UTC().Format(time.RFC3339Nano))}
		it.dl = &pendingDL{reason: metrics.ReasonGone, o: o, attempts: it.attempts}
		return b.finish(it)
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
	o := b.push(ctx, it)
	fenced := ctx.Err() != nil
	cancel()
	done := time.Now()
	b.m.InFlight.Dec()
	b.m.PushDuration.Observe(done.Sub(start).Seconds())
	b.pushes.inc(it.close, o.Class)
	if b.pushCtx.Err() != nil && o.Class != OK {
		// Cut short by shutdown: neither the command's nor the gateway's
		// fault; it stays for the partition's next owner.
		o = Outcome{Class: Abandoned, Err: o.Err}
	}
	if fenced && o.Class != OK && o.Class != Abandoned {
		// Cut at the fence: not an attempt; the lane waits for the
		// renewal or the partition's drop.
		it.attempts--
		b.pm.Fenced.Inc()
		return retry, fenceRecheck
	}
	if d.redelivered && o.Class == OK {
		b.pm.Duplicates.Inc()
	}
	if o.Class == Gone {
		b.gone.add(it.token, o.Status, done)
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
	case Release:
		// Cut short by shutdown: the item stays pending in the
		// position; the partition's next owner pushes it.
		return retry, dec.Delay
	case Retry:
		b.m.Retries.Inc()
		b.log.Debug("push failed, will retry", "kind", d.kind, "token", it.token, "status", o.Status,
			"attempt", it.attempts, "delay", dec.Delay, "err", o.Err)
		return retry, dec.Delay
	}
	it.dl = &pendingDL{reason: dec.Reason, o: o, attempts: it.attempts, gone: dec.Gone}
	return b.finish(it)
}
