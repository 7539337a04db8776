package bridge

import (
	"sync"

	"github.com/wsbridge/wsbridge/subjects"
)

// fanouts shares the expansion of a fan-out among the partitions of this
// bridge. Every partition reads each broadcast, group and user command; one
// bridge owning all 32 partitions would otherwise walk the whole index 32
// times per broadcast (and hash every token each time) to keep 1/32 of it
// each. The first partition to handle the message expands it and splits
// the targets by partition; the others take their share. An entry is
// dropped once every partition owned at the time took its share, and at
// most fanoutEntries are kept (a partition lost meanwhile never asks).
type fanouts struct {
	mu    sync.Mutex
	m     map[uint64]*fanout
	order []uint64
}

type fanout struct {
	byPart map[int][]string
	left   int // partitions yet to take their share
}

// fanoutEntries bounds the expansions kept: with 100,000 connections one
// holds about 1.6 MB of token references.
const fanoutEntries = 16

// tokens returns partition part's targets of the fan-out at stream sequence
// seq, expanding it with expand (the whole target list) if no partition of
// this bridge did yet. owned is how many partitions this bridge holds.
func (f *fanouts) tokens(seq uint64, part, parts, owned int, expand func() []string) []string {
	f.mu.Lock()
	e := f.m[seq]
	f.mu.Unlock()
	if e == nil {
		byPart := map[int][]string{}
		for _, t := range expand() {
			pn := subjects.Partition(t, parts)
			byPart[pn] = append(byPart[pn], t)
		}
		f.mu.Lock()
		if e = f.m[seq]; e == nil {
			e = &fanout{byPart: byPart, left: owned}
			if f.m == nil {
				f.m = map[uint64]*fanout{}
			}
			f.m[seq] = e
			f.order = append(f.order, seq)
			for len(f.order) > fanoutEntries {
				delete(f.m, f.order[0])
				f.order = f.order[1:]
			}
		}
		f.mu.Unlock()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := e.byPart[part]
	if e.left--; e.left <= 0 && f.m[seq] == e {
		delete(f.m, seq)
	}
	return out
}
