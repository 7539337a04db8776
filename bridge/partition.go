package bridge

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// part is one outbound partition while this bridge holds its lease: its
// consumer, the messages it holds and the lanes of its connections, under
// its own lock. Every connection belongs to exactly one partition, so lanes
// never span two.
type part struct {
	b *Bridge
	n int
	// cons and fcons are the partition's consumers of direct commands
	// and of fan-outs; in pulls both.
	cons  jetstream.Consumer
	fcons jetstream.Consumer
	in    *intake

	// fence is the end of the lease as this bridge can vouch for it, in
	// nanoseconds since b.epoch (monotonic): no push starts after it, and
	// pushes in flight are cut at it (see ownership.go).
	fence atomic.Int64
	// stopping is set once the partition is being handed off or dropped;
	// dropped means without NAKs (the lease may be someone else's).
	stopping atomic.Bool
	dropped  atomic.Bool
	// broken is set when an ack could not be confirmed: the partition
	// must be dropped, not renewed (see ackConfirmed).
	broken atomic.Bool

	mu    sync.Mutex
	lanes map[string]*lane
	held  map[uint64]*delivery
	// giveBack collects the messages to NAK at a hand-off; gaveBack is set
	// once they were.
	giveBack []jetstream.Msg
	gaveBack bool
	// settled* remember recently acknowledged sequences (limits.go).
	settledSet  map[uint64]struct{}
	settledRing []uint64
	settledNext int
	quit        chan struct{} // closed when stop begins: lanes waiting for a retry wake up
	quitOnce    sync.Once
}

func newPart(b *Bridge, n int) *part {
	return &part{b: b, n: n, lanes: map[string]*lane{}, held: map[uint64]*delivery{}, quit: make(chan struct{})}
}

// valid reports whether a push may start now.
func (p *part) valid() bool {
	return !p.stopping.Load() && p.b.since() < p.fence.Load()
}

// deadline is the fence as a wall-clock deadline for a push context.
func (p *part) deadline() time.Time {
	return p.b.epoch.Add(time.Duration(p.fence.Load()))
}

// consumers returns the partition's consumers (nil before it consumes).
func (p *part) consumers() []jetstream.Consumer {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cons == nil {
		return nil
	}
	return []jetstream.Consumer{p.cons, p.fcons}
}

func (p *part) heldCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held)
}

// lookup fetches the partition's two consumers, direct and fan-out, with
// their info: where each stands and what it holds.
func (p *part) lookup(ctx context.Context) ([2]jetstream.Consumer, error) {
	b := p.b
	var cons [2]jetstream.Consumer
	for i, name := range []string{b.names.PartitionConsumer(p.n), b.names.FanOutConsumer(p.n)} {
		c, err := b.js.Consumer(ctx, b.names.StreamOut(), name)
		if err != nil {
			return cons, fmt.Errorf("consumer %s: %w", name, err)
		}
		cons[i] = c
	}
	return cons, nil
}

// held is the number of messages the consumers hold unacknowledged, as
// their info looked up said.
func held(cons [2]jetstream.Consumer) int {
	n := 0
	for _, c := range cons {
		n += c.CachedInfo().NumAckPending
	}
	return n
}

// consume starts pulling the partition's messages from its consumers (as
// lookup returned them), merged in stream order (intake.go).
func (p *part) consume(cons [2]jetstream.Consumer) error {
	b := p.b
	srcs := [2]intakeSource{
		{Consumer: b.names.PartitionConsumer(p.n), Filters: []string{b.names.PartitionFilter(p.n)}},
		{Consumer: b.names.FanOutConsumer(p.n), Filters: b.names.FanOutFilters(p.n)},
	}
	for i, c := range cons {
		info := c.CachedInfo()
		srcs[i].Delivered, srcs[i].AckFloor, srcs[i].Held = info.Delivered.Stream, info.AckFloor.Stream, info.NumAckPending
		srcs[i].CollectWait = b.opts.AckWait + 2*time.Second
	}
	group, user := b.names.Group(""), b.names.User("")
	var fanOutClear func(uint64) (uint64, bool)
	if b.outLog != nil {
		fanOutClear = func(from uint64) (uint64, bool) { return b.outLog.clearTo(from, p.n) }
	}
	in, err := newIntake(b.nc, b.names.StreamOut(), srcs[0], srcs[1], b.outLast.Load, fanOutClear,
		// Bounded in bytes, not messages: 1000 messages of 1 MB would be
		// a gigabyte buffered (see pullBytes); this partition's share of
		// the held-bytes budget. The count is bounded by MaxAckPending
		// at the server.
		pullBytes(b.opts.MaxHeldBytes/int64(b.opts.Partitions), b.nc.MaxPayload()),
		p.handle,
		func(subject string) bool {
			return strings.HasPrefix(subject, group) || strings.HasPrefix(subject, user)
		},
		func(level slog.Level, msg string, args ...any) {
			if p.stopping.Load() || b.stopping.Load() {
				return
			}
			b.log.Log(context.Background(), level, msg, append(args, "partition", p.n)...)
		})
	if err != nil {
		return fmt.Errorf("pull partition %d: %w", p.n, err)
	}
	p.mu.Lock()
	stopping := p.stopping.Load()
	if !stopping {
		p.cons, p.fcons, p.in = cons[0], cons[1], in
	}
	p.mu.Unlock()
	if stopping {
		// stop ran while the pulls were being set up and found nothing
		// to stop: these must not go on pulling for a partition given up.
		in.stop()
		in.close()
	}
	return nil
}

// handle receives each message of the partition, in stream order (the
// intake merges its two consumers), and queues its pushes.
func (p *part) handle(m jetstream.Msg) {
	b := p.b
	meta, metaErr := m.Metadata()
	size := heldSize(m)
	b.waitRoom(p, size)
	// The stopping check and the insert into held are one critical section
	// (stop sets stopping under p.mu too): otherwise stop's wait could see
	// nothing held between them and finish while this message is queued
	// with no worker left to settle it.
	p.mu.Lock()
	if p.stopping.Load() {
		defer b.release(size)
		switch {
		case p.dropped.Load():
			// Not ours any more: let it expire rather than NAK it ahead
			// of what the new owner holds.
		case !p.gaveBack:
			p.giveBack = append(p.giveBack, m)
		default:
			_ = m.Nak()
		}
		p.mu.Unlock()
		return
	}
	if metaErr != nil {
		p.mu.Unlock()
		b.release(size)
		// Not a JetStream message: nothing to ack, nothing to redeliver.
		b.log.Error("outbound message without metadata", "err", metaErr)
		return
	}
	d := &delivery{msg: m, part: p, seq: meta.Sequence.Stream, stamp: meta.Timestamp, touched: time.Now(),
		redelivered: meta.NumDelivered > 1}
	if _, dup := p.held[d.seq]; dup {
		// Redelivered while still held (the ack wait ran out under a long
		// push); the held copy will be acked.
		p.mu.Unlock()
		b.release(size)
		return
	}
	if meta.NumDelivered > 1 && p.settledLocked(d.seq) {
		// A copy of a message already pushed and acknowledged (see
		// settledLocked): acknowledge it again, push nothing.
		p.mu.Unlock()
		b.release(size)
		_ = m.Ack()
		return
	}
	p.held[d.seq] = d
	d.size = size
	p.mu.Unlock()

	st, perr := b.names.ParseStored(m.Subject())
	d.orig = st.Original
	subj, binary, err := parseOutbound(b.names, st.Original, m.Headers(), m.Data())
	if perr != nil && subj.Dir == subjects.Out {
		subj, err = subjects.Subject{}, perr
	}
	if subj.Dir != subjects.Out {
		if st.Partition < 0 && p.n != 0 {
			// A malformed subject every partition reads (P.out.X):
			// partition 0 dead-letters it, the others only let go.
			d.remaining.Store(1)
			b.settle(d)
			return
		}
		b.reject(d, subjects.KindInvalid, "", Invalid, err, 0)
		return
	}
	d.kind = subj.Kind
	if (subj.Kind == subjects.KindSend || subj.Kind == subjects.KindClose) && st.Partition != p.n {
		b.reject(d, subj.Kind, subj.Token, Invalid,
			fmt.Errorf("%w: stored in partition %d, read by partition %d", subjects.ErrBadSubject, st.Partition, p.n), 0)
		return
	}
	if meta.NumDelivered > uint64(b.opts.MaxDeliver) {
		b.reject(d, subj.Kind, subj.Token, OverDelivered,
			fmt.Errorf("delivered %d times without an outcome (max deliver %d)", meta.NumDelivered, b.opts.MaxDeliver), int(meta.NumDelivered))
		return
	}
	if err != nil {
		b.reject(d, subj.Kind, subj.Token, Invalid, err, 0)
		return
	}
	d.body, d.binary = m.Data(), binary
	if subj.Kind == subjects.KindSend || subj.Kind == subjects.KindClose {
		// The common case: one item, carried by the delivery itself.
		d.remaining.Store(1)
		d.one = item{d: d, token: subj.Token, close: subj.Kind == subjects.KindClose}
		b.enqueue(&d.one)
		return
	}
	// Every partition reads the fan-out; each pushes it to its own
	// connections, so a target gets it once, in its lane's order. The
	// partitions of this bridge share one expansion (fanout.go).
	tokens := b.fanouts.tokens(d.seq, p.n, b.opts.Partitions, b.ownedCount(), func() []string {
		exclude := parseExclude(m.Headers().Get(subjects.HeaderExclude))
		switch subj.Kind {
		case subjects.KindGroup:
			return b.idx.group(subj.Name, exclude)
		case subjects.KindUser:
			return b.idx.user(subj.Name, exclude)
		}
		return b.idx.all(exclude)
	})
	d.fanout = true
	if len(tokens) == 0 {
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

// stop ends the partition's work. A hand-off lets in-flight pushes finish
// within ctx and NAKs every message not pushed, in stream order, so the next
// owner gets them first; a drop (the lease is lost or unconfirmed) abandons
// them without a word, and they come back to the next owner after the ack
// wait, which it waits out. It reports whether everything held was settled.
func (p *part) stop(ctx context.Context, handoff bool) bool {
	b := p.b
	p.mu.Lock()
	if !handoff {
		p.dropped.Store(true)
	}
	p.stopping.Store(true)
	in := p.in
	p.mu.Unlock()
	p.quitOnce.Do(func() { close(p.quit) })
	if in != nil {
		// No more pulls; what was received reaches handle, which keeps
		// it to NAK in order at the end. A drop lets go of it all.
		in.stop()
		if !handoff {
			in.close()
		}
	}
	// Workers abandon the lanes they pick up; in-flight pushes finish.
	drained := p.waitHeld(ctx)
	if !drained {
		b.log.Warn("partition stop: in-flight pushes still running", "partition", p.n, "held", p.heldCount())
	}
	if !handoff {
		p.mu.Lock()
		p.giveBack, p.gaveBack = nil, true
		p.mu.Unlock()
		return drained
	}
	if in != nil {
		// The server keeps this instance's pull requests until they are
		// answered or expire (at most pullExpiry): deliveries to them come
		// before the NAKs and reach giveBack too, and, while it has any, a
		// NAKed message it pops for one goes to the back of its redelivery
		// queue. Wait them out so the NAKs below are redelivered in stream
		// order.
		deadline := time.Now().Add(pullExpiry + 250*time.Millisecond)
		for in.pending() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		in.close()
	}
	if n := p.giveBackAll(); n > 0 {
		b.log.Debug("handed messages back to JetStream", "partition", p.n, "count", n)
	}
	return drained
}

// waitHeld waits until no message is held or ctx ends; it reports whether
// everything was settled.
func (p *part) waitHeld(ctx context.Context) bool {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if p.heldCount() == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return p.heldCount() == 0
		case <-t.C:
		}
	}
}

// giveBackAll NAKs the messages abandoned while handing off, in stream
// order. JetStream redelivers NAKed messages in the order of the NAKs, and
// they are abandoned out of order (buffered messages reach the handler
// before the lanes holding earlier ones are abandoned), so NAKing as they
// come would let a later message to a connection overtake an earlier one.
func (p *part) giveBackAll() int {
	p.mu.Lock()
	msgs := p.giveBack
	p.giveBack = nil
	p.gaveBack = true
	p.mu.Unlock()
	slices.SortFunc(msgs, func(x, y jetstream.Msg) int { return cmp.Compare(streamSeq(x), streamSeq(y)) })
	for _, m := range msgs {
		_ = m.Nak()
	}
	return len(msgs)
}

// extendHeld extends the ack deadline of the messages the partition holds
// when any needs it: every one, in stream order, so that if this bridge
// dies they expire together and are redelivered in publish order.
// Extending only the stale ones would give a later message an earlier
// deadline than a message extended just before it. Nothing is extended
// once the lease is unconfirmed: the next owner counts on the messages
// expiring within the ack wait.
func (p *part) extendHeld(now time.Time, every time.Duration, buf []*delivery) []*delivery {
	if !p.valid() {
		return buf
	}
	all := buf[:0]
	stale := false
	p.mu.Lock()
	for _, d := range p.held {
		stale = stale || now.Sub(d.touched) >= every
		all = append(all, d)
	}
	if stale {
		for _, d := range all {
			d.touched = now
		}
	}
	p.mu.Unlock()
	if !stale {
		return all
	}
	slices.SortFunc(all, func(x, y *delivery) int { return cmp.Compare(x.seq, y.seq) })
	for _, d := range all {
		_ = d.msg.InProgress()
	}
	clear(all) // drop references to finished deliveries
	return all
}
