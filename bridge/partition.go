package bridge

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// part is one outbound partition while this bridge holds its lease: where it
// stands in the outbound log, the commands it took and has not resolved, and
// the lanes of its connections, under its own lock. Every connection belongs
// to exactly one partition, so lanes never span two.
//
// The log reader (reader.go) offers the partition every command in stream
// order. The partition takes a command when it comes right after the last
// one it saw (next), or when it is one the previous owner left pending; a
// command resolves once each of its pushes to this partition's connections
// is done or dead-lettered. Its position, committed to the Positions bucket
// (commit.go), is next plus the commands taken and not yet resolved.
type part struct {
	b *Bridge
	n int

	// fence is the end of the lease as this bridge can vouch for it, in
	// nanoseconds since b.epoch (monotonic): no push starts after it, and
	// pushes in flight are cut at it (see ownership.go).
	fence atomic.Int64
	// stopping is set once the partition is being handed off or dropped;
	// dropped means without a last commit (the lease may be someone
	// else's).
	stopping atomic.Bool
	dropped  atomic.Bool
	// broken is set when its position could not be committed because
	// another bridge wrote it: the partition must be dropped, not renewed.
	broken atomic.Bool
	// paused is set while the partition holds more than its share of
	// MaxHeldBytes: it takes nothing, and the reader reads the log again
	// from next once it drained.
	paused atomic.Bool
	// pushing counts pushes in flight, which a hand-off waits for.
	pushing atomic.Int64
	// commitMu makes the partition's commits one at a time.
	commitMu sync.Mutex
	// begun is set once the partition knows where it starts (begin):
	// the reader offers it nothing before.
	begun atomic.Bool

	mu sync.Mutex
	// next is the first stream sequence not yet taken or passed over.
	next uint64
	// replay holds the commands below next that the previous owner left
	// pending, with the connections still to push to (nil: every target).
	replay map[uint64][]string
	// replayOrder is replay's sequences in increasing order, with those
	// held since dropped lazily from its front: the lowest is found in
	// constant time for every command the reader offers.
	replayOrder []uint64
	// repeatBelow: commands below it may have been pushed by a previous
	// owner that died before it committed (counted as duplicates).
	repeatBelow uint64
	// inflight are the commands taken and not yet resolved, in stream order.
	inflight  []*delivery
	heldBytes int64
	lanes     map[string]*lane
	// rev is the revision of the position last written, committed what it
	// said.
	rev       uint64
	committed subjects.Position
	// cleared is set once stop let go of everything held.
	cleared bool

	quit     chan struct{} // closed when stop begins: lanes waiting for a retry wake up
	quitOnce sync.Once
}

func newPart(b *Bridge, n int) *part {
	return &part{b: b, n: n, lanes: map[string]*lane{}, quit: make(chan struct{})}
}

// valid reports whether a push may start now.
func (p *part) valid() bool {
	return !p.stopping.Load() && p.b.since() < p.fence.Load()
}

// deadline is the fence as a wall-clock deadline for a push context.
func (p *part) deadline() time.Time {
	return p.b.epoch.Add(time.Duration(p.fence.Load()))
}

// begin sets where the partition starts: the position its previous owner
// committed (claimed at revision rev), and the stream's last sequence when
// the lease was taken from a bridge that did not hand it off (0 after a
// hand-off): commands up to it may have been pushed already.
func (p *part) begin(pos subjects.Position, rev, last uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next = pos.Next
	p.replay, p.replayOrder = nil, nil
	for _, pc := range pos.Pending {
		if pc.Seq >= pos.Next {
			continue
		}
		if p.replay == nil {
			p.replay = map[uint64][]string{}
		}
		if _, dup := p.replay[pc.Seq]; !dup {
			p.replayOrder = append(p.replayOrder, pc.Seq)
		}
		p.replay[pc.Seq] = pc.Tokens
	}
	slices.Sort(p.replayOrder)
	if last > 0 {
		p.repeatBelow = last + 1
	}
	p.rev, p.committed = rev, pos
	p.begun.Store(true)
}

// from is the lowest sequence the partition still has to read, and whether
// it reads at all now.
func (p *part) from() (uint64, bool) {
	if !p.begun.Load() || p.stopping.Load() || p.paused.Load() {
		return 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if low, ok := p.replayLow(); ok && low < p.next {
		return low, true
	}
	return p.next, true
}

// offer is the reader's question for the command at seq, read right after
// prev: take it (with the tokens to push to, nil for every target), or
// pass over it. gap reports that the partition has commands to read behind
// the reader (it was paused, or joined while the reader was ahead).
func (p *part) offer(seq, prev uint64) (take bool, tokens []string, gap bool) {
	if !p.begun.Load() || p.stopping.Load() {
		return false, nil, false
	}
	paused := p.paused.Load()
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq < p.next {
		// Left in replay until hold takes it: a partition stopped in
		// between must still list it as pending.
		tk, ok := p.replay[seq]
		if !ok || paused {
			return false, nil, false
		}
		if p.replayBehind(prev) {
			// An older pending command is behind the reader: read
			// again from it first.
			return false, nil, true
		}
		return true, tk, false
	}
	if p.next <= prev || p.replayBehind(prev) || paused {
		return false, nil, !paused
	}
	return true, nil, false
}

// replayBehind reports whether a command the previous owner left pending
// lies at or before prev, that is behind the reader: nothing newer may be
// taken before it, or a connection would get it after newer ones; p.mu
// held.
func (p *part) replayBehind(prev uint64) bool {
	low, ok := p.replayLow()
	return ok && low <= prev
}

// replayLow is the lowest pending command of the previous owner not yet
// held, if any; p.mu held.
func (p *part) replayLow() (uint64, bool) {
	for len(p.replayOrder) > 0 {
		if _, ok := p.replay[p.replayOrder[0]]; ok {
			return p.replayOrder[0], true
		}
		p.replayOrder = p.replayOrder[1:]
	}
	p.replay, p.replayOrder = nil, nil
	return 0, false
}

// pass moves the partition past a command that is not its own (or that
// has no target in it), when it follows on from what it read.
func (p *part) pass(seq, prev uint64) (gap bool) {
	if !p.begun.Load() || p.stopping.Load() || p.paused.Load() {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case seq < p.next:
	case p.next <= prev || p.replayBehind(prev):
		return true
	default:
		p.next = seq + 1
	}
	return false
}

// hold records a command taken: it is in flight until resolved. It reports
// false when the partition has stopped meanwhile (the command is the next
// owner's).
func (p *part) hold(d *delivery) bool {
	p.mu.Lock()
	if p.cleared || p.stopping.Load() {
		p.mu.Unlock()
		return false
	}
	if d.seq >= p.next {
		p.next = d.seq + 1
	} else {
		delete(p.replay, d.seq)
	}
	d.redelivered = d.seq < p.repeatBelow
	i, _ := slices.BinarySearchFunc(p.inflight, d.seq, func(x *delivery, s uint64) int { return cmp.Compare(x.seq, s) })
	p.inflight = slices.Insert(p.inflight, i, d)
	p.heldBytes += d.size
	p.mu.Unlock()
	p.b.hold(d.size)
	return true
}

// full reports whether a command of size bytes would take the partition
// past its share (when it holds something), or the bridge past maxHeld
// (when it holds something).
func (p *part) full(size, share, maxHeld int64) bool {
	p.mu.Lock()
	held := p.heldBytes
	p.mu.Unlock()
	if held > 0 && held+size > share {
		return true
	}
	all := p.b.held()
	return all > 0 && all+size > maxHeld
}

// pause stops the partition taking until it drained; next stays at seq.
// A release resumes it; but the last releases may have come between the
// reader finding it full and the flag set here, and with nothing held no
// release comes again: then it resumes at once, or it would stay paused
// for good with nothing to wait for (a chaos run: three partitions of one
// bridge stuck at one position until the end, none of them holding
// anything). Release updates what is held before it looks for paused
// partitions, and pause sets the flag before it looks at what is held, so
// one of the two sees the other.
func (p *part) pause() {
	if !p.paused.Swap(true) {
		p.b.pausedParts.Add(1)
	}
	if p.b.held() == 0 {
		p.resume()
	}
}

// resume lets a paused partition take again once it holds at most half its
// share and the bridge at most three quarters of MaxHeldBytes, and has the
// reader read the log again from where it stopped. It reports whether it
// resumed.
func (p *part) resume() bool {
	if !p.paused.Load() {
		return false
	}
	b := p.b
	share := b.share()
	p.mu.Lock()
	ok := p.heldBytes <= share/2 && b.held() <= b.opts.MaxHeldBytes*3/4
	p.mu.Unlock()
	if !ok || !p.paused.CompareAndSwap(true, false) {
		return false
	}
	b.pausedParts.Add(-1)
	b.reader.kick()
	return true
}

// resolved marks d done: every push of it to this partition's connections
// succeeded or was dead-lettered.
func (p *part) resolved(d *delivery) {
	p.mu.Lock()
	if p.cleared || d.done {
		p.mu.Unlock()
		return
	}
	d.done = true
	p.heldBytes -= d.size
	// Drop the resolved commands at the front; the rest stay in order.
	i := 0
	for i < len(p.inflight) && p.inflight[i].done {
		i++
	}
	if i > 0 {
		clear(p.inflight[:i])
		p.inflight = p.inflight[i:]
	}
	p.mu.Unlock()
	p.b.release(d.size)
}

// maxPendingRecorded bounds the commands a position lists as pending, and
// maxTokensRecorded the connections listed for fan-outs: past them the
// position is cut back (its next lowered), and what lay beyond may be
// pushed again by the next owner.
const (
	maxPendingRecorded = 1024
	maxTokensRecorded  = 4096
)

// position is what the partition has resolved, to commit; false once stop
// let go of what it held.
func (p *part) position() (subjects.Position, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cleared {
		return subjects.Position{}, false
	}
	pos := subjects.Position{Next: p.next, Stream: p.committed.Stream, Owner: p.b.id}
	tokens := 0
	for _, d := range p.inflight {
		if d.done {
			continue
		}
		pc := subjects.PendingCommand{Seq: d.seq}
		if d.items != nil {
			for _, it := range d.items {
				if !it.done {
					pc.Tokens = append(pc.Tokens, it.token)
				}
			}
			// Listed even when none is done: a next owner expanding it
			// again would reach connections registered since, after
			// newer commands they already got.
		}
		tokens += len(pc.Tokens)
		pos.Pending = append(pos.Pending, pc)
	}
	for s, tk := range p.replay {
		tokens += len(tk)
		pos.Pending = append(pos.Pending, subjects.PendingCommand{Seq: s, Tokens: tk})
	}
	slices.SortFunc(pos.Pending, func(x, y subjects.PendingCommand) int { return cmp.Compare(x.Seq, y.Seq) })
	if len(pos.Pending) > maxPendingRecorded || tokens > maxTokensRecorded {
		keep, t := 0, 0
		for keep < len(pos.Pending) && keep < maxPendingRecorded && t+len(pos.Pending[keep].Tokens) <= maxTokensRecorded {
			t += len(pos.Pending[keep].Tokens)
			keep++
		}
		if keep < len(pos.Pending) {
			pos.Next = pos.Pending[keep].Seq
			pos.Pending = pos.Pending[:keep]
		}
	}
	return pos, true
}

func (p *part) heldCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.inflight)
}

// stop ends the partition's work. A hand-off lets in-flight pushes finish
// within ctx and commits what was resolved, so the next owner starts exactly
// there; a drop (the lease is lost or unconfirmed) lets everything go: the
// next owner starts from the last commit. It reports whether every push in
// flight finished.
func (p *part) stop(ctx context.Context, handoff bool) bool {
	b := p.b
	if !handoff {
		p.dropped.Store(true)
	}
	p.stopping.Store(true)
	if p.paused.Swap(false) {
		b.pausedParts.Add(-1)
	}
	p.quitOnce.Do(func() { close(p.quit) })
	// Workers abandon the lanes they pick up; in-flight pushes finish.
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	finished := true
	for p.pushing.Load() > 0 {
		select {
		case <-ctx.Done():
			finished = false
			b.log.Warn("partition stop: in-flight pushes still running", "partition", p.n, "pushes", p.pushing.Load())
		case <-t.C:
			continue
		}
		break
	}
	if finished {
		// A drop commits too, if it still can: the compare-and-set fails
		// once the next owner claimed the position, and what was pushed
		// is then not pushed again by a bridge that took the lease
		// without a claim in between.
		cctx := ctx
		if !handoff {
			var cancel context.CancelFunc
			cctx, cancel = context.WithTimeout(ctx, time.Second)
			defer cancel()
		}
		if err := b.commit(cctx, p); err != nil && handoff {
			b.log.Warn("partition handed off without its last position; the next owner may repeat its latest pushes", "partition", p.n, "err", err)
		}
	}
	p.mu.Lock()
	var size int64
	for _, d := range p.inflight {
		if !d.done {
			size += d.size
		}
	}
	p.inflight, p.lanes, p.heldBytes, p.cleared = nil, map[string]*lane{}, 0, true
	p.mu.Unlock()
	b.release(size)
	return finished
}

func (b *Bridge) addPart(p *part) {
	b.pmu.Lock()
	b.parts[p.n] = p
	b.snapParts()
	b.pmu.Unlock()
}

func (b *Bridge) removePart(p *part) {
	b.pmu.Lock()
	if b.parts[p.n] == p {
		delete(b.parts, p.n)
		b.snapParts()
	}
	b.pmu.Unlock()
	b.pm.Backlog.DeleteLabelValues(strconv.Itoa(p.n))
}

// snapParts publishes the list of partitions held, in partition order, for
// ownedParts; b.pmu held.
func (b *Bridge) snapParts() {
	out := make([]*part, 0, len(b.parts))
	for _, p := range b.parts {
		out = append(out, p)
	}
	slices.SortFunc(out, func(x, y *part) int { return cmp.Compare(x.n, y.n) })
	b.partList.Store(&out)
}

// ownedParts returns the partitions held, in partition order. The slice is
// shared: callers must not modify it.
func (b *Bridge) ownedParts() []*part {
	if l := b.partList.Load(); l != nil {
		return *l
	}
	return nil
}

// ownedCount is how many partitions this bridge works now (ownedParts
// without building and sorting the list: it is asked for every fan-out).
func (b *Bridge) ownedCount() int {
	b.pmu.Lock()
	defer b.pmu.Unlock()
	return len(b.parts)
}

// Owned returns the partitions this bridge holds, in order.
func (b *Bridge) Owned() []int {
	var out []int
	for _, p := range b.ownedParts() {
		out = append(out, p.n)
	}
	return out
}

func (b *Bridge) heldCount() int {
	n := 0
	for _, p := range b.ownedParts() {
		n += p.heldCount()
	}
	return n
}
