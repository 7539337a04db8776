package bridge

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// trimEvery is how often the owner of partition 0 trims the outbound log.
const trimEvery = 5 * time.Second

// mark is the outbound log's last sequence at a time.
type mark struct {
	at   time.Time
	last uint64
}

// trim purges the outbound log below what every partition has resolved,
// keeping ReplayWindow of it while the log is less than half full. One bridge does it, the owner of partition 0;
// it keeps the log's last sequence every trimEvery, so it knows which
// sequences are older than the window on its own clock.
func (b *Bridge) trim() {
	defer b.wg.Done()
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	var marks []mark
	for {
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
		marks = b.trimOnce(ctx, marks)
		cancel()
	}
}

func (b *Bridge) trimOnce(ctx context.Context, marks []mark) []mark {
	b.pmu.Lock()
	p0 := b.parts[0]
	b.pmu.Unlock()
	if p0 == nil || !p0.begun.Load() {
		return nil
	}
	st, err := b.js.Stream(ctx, b.names.StreamOut())
	if err != nil {
		return marks
	}
	info := st.CachedInfo()
	now := time.Now()
	marks = append(marks, mark{at: now, last: info.State.LastSeq})
	// The newest mark older than the window: everything up to its last
	// sequence was stored before the window.
	var cut uint64
	keep := 0
	for i, m := range marks {
		if now.Sub(m.at) < b.opts.ReplayWindow {
			break
		}
		cut, keep = m.last+1, i
	}
	marks = marks[keep:]
	if max := info.Config.MaxBytes; max > 0 && info.State.Bytes > uint64(max)/2 {
		// Half full: room for new commands comes before the replay
		// window.
		cut = info.State.LastSeq + 1
	}
	if cut <= info.State.FirstSeq {
		return marks
	}
	low, err := subjects.LowestPosition(ctx, b.positions, b.opts.Partitions, info)
	if err != nil {
		b.log.Debug("outbound log not trimmed", "err", err)
		return marks
	}
	if cut = min(cut, low); cut <= info.State.FirstSeq {
		return marks
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(cut)); err != nil {
		b.log.Debug("outbound log not trimmed", "err", err)
		return marks
	}
	b.log.Debug("outbound log trimmed", "below", cut)
	return marks
}
