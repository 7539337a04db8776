package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// CommitInterval is how often a partition's position is written when it
// changed: the window a crash may make the next owner push again.
const CommitInterval = 250 * time.Millisecond

// errPositionTaken reports a position written by another bridge since this
// one last wrote it: the partition is someone else's.
var errPositionTaken = errors.New("partition position written by another bridge")

// commits writes the owned partitions' positions every CommitInterval.
func (b *Bridge) commits() {
	defer b.wg.Done()
	t := time.NewTicker(CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for _, p := range b.ownedParts() {
			if !p.begun.Load() || p.stopping.Load() || !p.valid() {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(b.bgCtx, 2*time.Second)
				defer cancel()
				if err := b.commitPeriodic(ctx, p); err != nil && !errors.Is(err, errPositionTaken) && ctx.Err() == nil {
					b.log.Debug("position not committed; next round tries again", "partition", p.n, "err", err)
				}
			}()
		}
		wg.Wait()
	}
}

// commitPeriodic is commit for the periodic round: nothing once the
// partition is stopping, whose stop makes the last commit itself.
func (b *Bridge) commitPeriodic(ctx context.Context, p *part) error {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	if p.stopping.Load() {
		return nil
	}
	return b.commitLocked(ctx, p)
}

// commit writes p's position if it changed since the last write, with a
// compare-and-set on the revision this bridge wrote last: a bridge that
// lost the partition (a zombie) cannot move it. A conflict breaks the
// partition, which the lease keeper then drops. Commits of one partition
// are made one at a time: a periodic one that raced a stop's could
// otherwise write, after the stop let go of what it held, a position
// without the commands still pending.
func (b *Bridge) commit(ctx context.Context, p *part) error {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	return b.commitLocked(ctx, p)
}

func (b *Bridge) commitLocked(ctx context.Context, p *part) error {
	pos, ok := p.position()
	if !ok {
		return nil // let go of: nothing left to say
	}
	p.mu.Lock()
	rev, last := p.rev, p.committed
	p.mu.Unlock()
	if pos.Next == last.Next && slices.EqualFunc(pos.Pending, last.Pending, samePending) {
		return nil
	}
	pos.At = time.Now().UTC()
	nrev, err := b.positions.Update(ctx, subjects.PositionKey(p.n), pos.Encode(), rev)
	switch {
	case err == nil:
		b.pm.Commits.WithLabelValues("ok").Inc()
		p.mu.Lock()
		if nrev > p.rev {
			p.rev, p.committed = nrev, pos
		}
		p.mu.Unlock()
		return nil
	case isConflict(err):
		if own, orev, ok := b.ownPosition(ctx, p.n, rev); ok {
			// A commit of ours whose answer was lost (a timeout during a
			// leader election) was applied: adopt it and write again.
			p.mu.Lock()
			if orev > p.rev {
				p.rev, p.committed = orev, own
			}
			p.mu.Unlock()
			return b.commitLocked(ctx, p)
		}
		b.pm.Commits.WithLabelValues("conflict").Inc()
		if !p.broken.Swap(true) {
			b.log.Warn("partition position written by another bridge; giving the partition up", "partition", p.n)
			b.own.poke()
		}
		return errPositionTaken
	}
	b.pm.Commits.WithLabelValues("error").Inc()
	return fmt.Errorf("commit position of partition %d: %w", p.n, err)
}

// ownPosition reports whether partition p's position, found at another
// revision than the one this bridge last wrote (rev), was written by this
// bridge (a commit answered late but applied): only this bridge writes its
// own id in a position, and a taker's claim writes the taker's.
func (b *Bridge) ownPosition(ctx context.Context, p int, rev uint64) (subjects.Position, uint64, bool) {
	e, err := b.positions.Get(ctx, subjects.PositionKey(p))
	if err != nil || e.Revision() <= rev {
		return subjects.Position{}, 0, false
	}
	pos, err := subjects.DecodePosition(e.Value())
	if err != nil || pos.Owner != b.id {
		return subjects.Position{}, 0, false
	}
	return pos, e.Revision(), true
}

func samePending(x, y subjects.PendingCommand) bool {
	return x.Seq == y.Seq && slices.Equal(x.Tokens, y.Tokens)
}

// claim reads partition p's position and writes it back as this bridge's
// (compare-and-set), so that a previous owner's late commit fails; it
// returns the position to start from, its revision, and the stream's last
// sequence (where the position may lag after an owner that died).
func (b *Bridge) claim(ctx context.Context, p int) (subjects.Position, uint64, uint64, error) {
	st, err := b.js.Stream(ctx, b.names.StreamOut())
	if err != nil {
		return subjects.Position{}, 0, 0, fmt.Errorf("outbound stream: %w", err)
	}
	for try := 0; ; try++ {
		info, err := st.Info(ctx)
		if err != nil {
			return subjects.Position{}, 0, 0, fmt.Errorf("outbound stream: %w", err)
		}
		first, last := info.State.FirstSeq, info.State.LastSeq
		if first == 0 {
			first = last + 1
		}
		pos, rev, ok, err := subjects.ReadPosition(ctx, b.positions, p, info.Created, first)
		if err != nil {
			return subjects.Position{}, 0, 0, fmt.Errorf("read position: %w", err)
		}
		if !ok && rev > 0 {
			b.log.Warn("partition position belongs to an earlier outbound stream; starting at the stream's first command", "partition", p, "first", first)
		}
		if low := pos.Low(); low < first {
			// Commands aged out of the log (--out-max-age) before anyone
			// read them; what is left starts at first.
			b.log.Warn("outbound commands expired before they were delivered", "partition", p, "from", low, "to", first-1)
			pos.Pending = slices.DeleteFunc(pos.Pending, func(pc subjects.PendingCommand) bool { return pc.Seq < first })
			pos.Next = max(pos.Next, first)
		}
		pos.Owner, pos.At = b.id, time.Now().UTC()
		var nrev uint64
		if rev == 0 {
			nrev, err = b.positions.Create(ctx, subjects.PositionKey(p), pos.Encode())
		} else {
			nrev, err = b.positions.Update(ctx, subjects.PositionKey(p), pos.Encode(), rev)
		}
		if err == nil {
			return pos, nrev, last, nil
		}
		if !isConflict(err) && !errors.Is(err, jetstream.ErrKeyExists) || try >= 4 {
			return subjects.Position{}, 0, 0, fmt.Errorf("claim position: %w", err)
		}
	}
}
