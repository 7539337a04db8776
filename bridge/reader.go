package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// reader reads the outbound log once for the whole bridge, with one ordered
// consumer (no acknowledgements, no state at the server), from the lowest
// position among the partitions it owns. Each command is offered to the
// partitions it concerns: a send or close to its own, a broadcast, group or
// user command to all of them, each pushing it to its own connections. A
// partition that needs what the reader passed already (taken over, or
// resumed after a pause) makes it start again from there; the others pass
// over what they took before.
type reader struct {
	b     *Bridge
	kicks chan struct{} // a partition may need the reader behind where it is
	idle  chan struct{} // the reader has nothing to read: something may have changed
	// cursor is the sequence after the last command read.
	cursor atomic.Uint64

	mu     sync.Mutex
	iter   jetstream.MessagesContext // current iterator; nil when none
	closed bool
}

func newReader(b *Bridge) *reader {
	return &reader{b: b, kicks: make(chan struct{}, 1), idle: make(chan struct{}, 1)}
}

// kick asks the reader to look again at what its partitions need.
func (r *reader) kick() {
	select {
	case r.kicks <- struct{}{}:
	default:
	}
}

// want is where the reader must read from for its partitions (0: nothing
// to read), and whether that is behind what it read.
func (r *reader) want() (from uint64, any bool) {
	for _, p := range r.b.ownedParts() {
		if f, ok := p.from(); ok && (!any || f < from) {
			from, any = f, true
		}
	}
	return from, any
}

// run reads until the bridge stops.
func (r *reader) run() {
	b := r.b
	defer b.wg.Done()
	go r.watchKicks()
	var it jetstream.MessagesContext
	defer func() {
		if it != nil {
			it.Stop()
		}
	}()
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-b.quit:
			return
		default:
		}
		from, any := r.want()
		if !any {
			if it != nil {
				r.setIter(nil)
				it.Stop()
				it = nil
			}
			select {
			case <-b.quit:
				return
			case <-r.idle:
			}
			continue
		}
		cur := r.cursor.Load()
		if it == nil || from < cur {
			if it != nil {
				r.setIter(nil)
				it.Stop()
			}
			var err error
			if it, err = r.open(from); err != nil {
				it = nil
				if b.stopping.Load() {
					return
				}
				b.log.Warn("outbound log not readable; retrying", "from", from, "err", err)
				select {
				case <-b.quit:
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			if from < cur && cur > 0 {
				b.pm.Rewinds.Inc()
			}
			r.cursor.Store(from)
			r.setIter(it)
		}
		m, err := it.Next()
		if err != nil {
			// Stopped for a look at the partitions (kick), or the
			// consumer failed: open it again from the cursor.
			r.setIter(nil)
			it.Stop()
			it = nil
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) && !b.stopping.Load() {
				b.log.Debug("outbound log read interrupted", "err", err)
			}
			continue
		}
		backoff = 100 * time.Millisecond
		meta, err := m.Metadata()
		if err != nil {
			b.log.Error("outbound message without metadata", "subject", clipString(m.Subject(), 256), "err", err)
			continue
		}
		seq := meta.Sequence.Stream
		prev := r.cursor.Load() - 1
		if seq <= prev {
			continue // a redelivery of the ordered consumer after a reset
		}
		r.handle(m, meta.Timestamp, seq, prev)
		r.cursor.Store(seq + 1)
	}
}

func (r *reader) setIter(it jetstream.MessagesContext) {
	r.mu.Lock()
	r.iter = it
	closed := r.closed
	r.mu.Unlock()
	if closed && it != nil {
		it.Stop()
	}
}

// close stops the reader's iterator for good (the bridge stops).
func (r *reader) close() {
	r.mu.Lock()
	r.closed = true
	it := r.iter
	r.mu.Unlock()
	if it != nil {
		it.Stop()
	}
}

// watchKicks interrupts the iterator when a partition needs the reader
// behind where it is, so it reopens from there.
func (r *reader) watchKicks() {
	b := r.b
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-b.quit:
			return
		case <-r.kicks:
		case <-t.C:
		}
		from, any := r.want()
		r.mu.Lock()
		it := r.iter
		r.mu.Unlock()
		switch {
		case it == nil:
			// Idle, or opening: wake the loop if it waits.
			select {
			case r.idle <- struct{}{}:
			default:
			}
		case !any || from < r.cursor.Load():
			it.Stop()
		}
	}
}

// open starts an ordered consumer at from.
func (r *reader) open(from uint64) (jetstream.MessagesContext, error) {
	b := r.b
	ctx, cancel := context.WithTimeout(b.bgCtx, 10*time.Second)
	defer cancel()
	c, err := b.js.OrderedConsumer(ctx, b.names.StreamOut(), jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   max(from, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("ordered consumer on %s from %d: %w", b.names.StreamOut(), from, err)
	}
	it, err := c.Messages(jetstream.PullMaxBytes(pullBytes(b.opts.MaxHeldBytes, b.nc.MaxPayload())))
	if err != nil {
		return nil, fmt.Errorf("read %s from %d: %w", b.names.StreamOut(), from, err)
	}
	return it, nil
}

// handle offers one command to the partitions it concerns.
func (r *reader) handle(m jetstream.Msg, stamp time.Time, seq, prev uint64) {
	b := r.b
	parts := b.ownedParts()
	if len(parts) == 0 {
		return
	}
	st, perr := b.names.ParseStored(m.Subject())
	subj, binary, err := parseOutbound(b.names, st.Original, m.Headers(), m.Data())
	if perr != nil && subj.Dir == subjects.Out {
		subj, err = subjects.Subject{}, perr
	}
	// The partition that handles it alone, or -1 for every partition.
	only := -1
	switch {
	case subj.Dir == subjects.Out && (subj.Kind == subjects.KindSend || subj.Kind == subjects.KindClose):
		only = st.Partition
		if only < 0 {
			only = subjects.Partition(subj.Token, b.opts.Partitions)
		}
	case subj.Dir != subjects.Out || err != nil:
		// Malformed: one partition dead-letters it, the one the stream
		// stored it in or partition 0.
		only = max(st.Partition, 0)
	}
	size := heldSize(m)
	share := b.share()
	var byPart map[int][]string // a fan-out's targets by partition, expanded once
	for _, p := range parts {
		if only >= 0 && p.n != only {
			if p.pass(seq, prev) {
				r.kick()
			}
			continue
		}
		take, tokens, gap := p.offer(seq, prev)
		if gap {
			r.kick()
		}
		if !take {
			continue
		}
		if p.full(size, share, b.opts.MaxHeldBytes) {
			// Over its share: it stops here and reads the log again
			// from this command once it drained (a pending one stays in
			// its replay list until it is held).
			p.pause()
			continue
		}
		d := &delivery{msg: m, part: p, seq: seq, stamp: stamp, orig: st.Original, size: size}
		switch {
		case subj.Dir != subjects.Out:
			if p.hold(d) {
				b.reject(d, subjects.KindInvalid, "", Invalid, err)
			}
			continue
		case err != nil:
			if p.hold(d) {
				b.reject(d, subj.Kind, subj.Token, Invalid, err)
			}
			continue
		}
		d.kind, d.body, d.binary = subj.Kind, m.Data(), binary
		if only >= 0 {
			// The common case: one item, carried by the delivery.
			d.remaining.Store(1)
			d.one = item{d: d, token: subj.Token, close: subj.Kind == subjects.KindClose}
			if !p.hold(d) {
				continue
			}
			b.enqueue(&d.one)
			continue
		}
		if tokens == nil {
			if byPart == nil {
				b.indexCurrent(stamp)
				byPart = b.expand(subj, m)
			}
			tokens = byPart[p.n]
		}
		if len(tokens) == 0 {
			if p.pass(seq, prev) {
				r.kick()
			}
			continue
		}
		// Whole before it is held: from then on the partition's position
		// (made by the commit loop) reads its items.
		d.remaining.Store(int64(len(tokens)))
		d.shareTail()
		d.items = make([]*item, len(tokens))
		for i, t := range tokens {
			d.items[i] = &item{d: d, token: t}
		}
		if !p.hold(d) {
			continue
		}
		for _, it := range d.items {
			b.enqueue(it)
		}
	}
}

// expand returns a fan-out's targets among this bridge's connections, by
// partition.
func (b *Bridge) expand(subj subjects.Subject, m jetstream.Msg) map[int][]string {
	exclude := parseExclude(m.Headers().Get(subjects.HeaderExclude))
	var tokens []string
	switch subj.Kind {
	case subjects.KindGroup:
		tokens = b.idx.group(subj.Name, exclude)
	case subjects.KindUser:
		tokens = b.idx.user(subj.Name, exclude)
	default:
		tokens = b.idx.all(exclude)
	}
	byPart := map[int][]string{}
	for _, t := range tokens {
		pn := subjects.Partition(t, b.opts.Partitions)
		byPart[pn] = append(byPart[pn], t)
	}
	return byPart
}
