package bridge

import (
	"cmp"
	"slices"
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
// so it keeps its place too. When the bridge stops, the lane is abandoned:
// its items' messages are NAKed, in lane order, with a delay, and JetStream
// redelivers them to this or another instance. Ordering is per bridge instance: with several instances sharing
// the consumer, two messages to one connection may be pushed by different
// instances at the same time.

// delivery is one JetStream message being handled.
type delivery struct {
	msg     jetstream.Msg
	seq     uint64 // stream sequence
	stamp   time.Time
	kind    subjects.Kind
	body    []byte
	binary  bool
	tail    []byte    // a fan-out's push body after the connection id, shared by its items (see payload)
	touched time.Time // last ack-deadline extension; guarded by Bridge.mu
	size    int64     // bytes counted against MaxHeldBytes; guarded by Bridge.mu

	one item // the item of a send or close (saves an allocation)

	remaining atomic.Int64 // items not yet resolved
	aborted   atomic.Bool  // an item was abandoned: NAK instead of ack
	nakDelay  atomic.Int64 // delay of the NAK, nanoseconds
}

// item is one push to one connection.
type item struct {
	d        *delivery
	token    string
	close    bool
	attempts int
	payload  []byte     // reverse-push body (head, before d.tail), built on first attempt
	dl       *pendingDL // set once the outcome calls for a dead letter not yet published
}

// lane is the FIFO of one connection's items; guarded by Bridge.mu.
type lane struct {
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
	b.mu.Lock()
	l := b.lanes[it.token]
	if l != nil {
		// Busy or ready lane: whoever holds it will get to this item.
		l.q = append(l.q, it)
		b.mu.Unlock()
		return
	}
	l = &lane{token: it.token, q: []*item{it}}
	b.lanes[it.token] = l
	b.mu.Unlock()
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

func (b *Bridge) work(l *lane) {
	b.mu.Lock()
	it := l.q[0]
	b.mu.Unlock()
	if b.stopping.Load() {
		b.abandonLane(l, 0)
		return
	}
	res, delay := b.attempt(it)
	switch res {
	case resolved:
		b.mu.Lock()
		l.q[0] = nil
		l.q = l.q[1:]
		empty := len(l.q) == 0
		if empty {
			delete(b.lanes, l.token)
		}
		b.mu.Unlock()
		b.resolve(it, false, 0)
		if !empty {
			b.ready.push(l)
		}
	case retry:
		if b.stopping.Load() {
			b.abandonLane(l, delay)
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-b.stopCh: // work() sees stopping and abandons the lane
			}
			b.ready.push(l)
		}()
	case abandon:
		b.abandonLane(l, delay)
	}
}

// abandonLane gives every item of the lane back to JetStream (NAK with
// delay), in lane order, and forgets the lane.
func (b *Bridge) abandonLane(l *lane, delay time.Duration) {
	b.mu.Lock()
	items := l.q
	l.q = nil
	if b.lanes[l.token] == l {
		delete(b.lanes, l.token)
	}
	b.mu.Unlock()
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

// settle acks or NAKs a delivery whose items are all resolved.
func (b *Bridge) settle(d *delivery) {
	b.mu.Lock()
	delete(b.held, d.seq)
	b.releaseLocked(d)
	if !d.aborted.Load() {
		b.markSettledLocked(d.seq)
	}
	if d.aborted.Load() && b.stopping.Load() && !b.gaveBack {
		// Stopping: NAK everything at the end, in stream order (see
		// giveBackAll).
		b.giveBack = append(b.giveBack, d.msg)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	if d.aborted.Load() {
		if err := d.msg.NakWithDelay(time.Duration(d.nakDelay.Load())); err != nil {
			b.log.Warn("nak failed; the message returns after the ack wait", "seq", d.seq, "err", err)
		}
		return
	}
	if err := d.msg.Ack(); err != nil {
		b.log.Warn("ack failed; the message may be pushed again", "seq", d.seq, "err", err)
	}
}

// giveBackAll NAKs the messages abandoned while stopping in stream order.
// JetStream redelivers NAKed messages in the order of the NAKs, and they are
// abandoned out of order (buffered messages reach the handler before the
// lanes holding earlier ones are abandoned), so NAKing as they come would let
// a later message to a connection overtake an earlier one after a restart.
func (b *Bridge) giveBackAll() int {
	b.mu.Lock()
	msgs := b.giveBack
	b.giveBack = nil
	b.gaveBack = true
	b.mu.Unlock()
	slices.SortFunc(msgs, func(x, y jetstream.Msg) int { return cmp.Compare(streamSeq(x), streamSeq(y)) })
	for _, m := range msgs {
		_ = m.Nak()
	}
	return len(msgs)
}

func (b *Bridge) giveBackCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.giveBack)
}

func streamSeq(m jetstream.Msg) uint64 {
	meta, err := m.Metadata()
	if err != nil {
		return 0
	}
	return meta.Sequence.Stream
}

// keepAlive extends the ack deadline of held messages before AckWait runs
// out. When any message needs it, every held message is extended, in stream
// order: their deadlines then expire together and in order, so if this
// bridge dies, JetStream redelivers what it held in publish order. Extending
// only the stale ones would give a later message an earlier deadline than a
// message extended just before it, and a restarted bridge would push the two
// to one connection out of order.
func (b *Bridge) keepAlive() {
	defer b.wg.Done()
	// A quarter of AckWait leaves three quarters of margin for a late tick
	// on a busy machine: a message whose deadline passes while held is
	// redelivered with a new timestamp and would fall out of order with the
	// ones extended on time.
	every := b.opts.AckWait / 4
	t := time.NewTicker(every)
	defer t.Stop()
	var all []*delivery
	for {
		select {
		case <-b.quit:
			return
		case now := <-t.C:
			all = all[:0]
			stale := false
			b.mu.Lock()
			for _, d := range b.held {
				stale = stale || now.Sub(d.touched) >= every
				all = append(all, d)
			}
			if stale {
				for _, d := range all {
					d.touched = now
				}
			}
			b.mu.Unlock()
			if !stale {
				continue
			}
			slices.SortFunc(all, func(x, y *delivery) int { return cmp.Compare(x.seq, y.seq) })
			for _, d := range all {
				_ = d.msg.InProgress()
			}
			clear(all) // drop references to finished deliveries
		}
	}
}
