package bridge

import (
	"fmt"
	"slices"
	"testing"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestFanoutsShareOneExpansion: the partitions of a bridge get disjoint
// shares that together are the whole target list, from one expansion.
func TestFanoutsShareOneExpansion(t *testing.T) {
	var all []string
	for i := 0; i < 1000; i++ {
		all = append(all, subjects.Token(fmt.Sprintf("c%d", i)))
	}
	const parts = 8
	var f fanouts
	expansions := 0
	expand := func() []string { expansions++; return all }
	var got []string
	for p := 0; p < parts; p++ {
		share := f.tokens(7, p, parts, parts, expand)
		for _, tok := range share {
			if subjects.Partition(tok, parts) != p {
				t.Fatalf("partition %d got %s of partition %d", p, tok, subjects.Partition(tok, parts))
			}
		}
		got = append(got, share...)
	}
	if expansions != 1 {
		t.Errorf("%d expansions for one fan-out, want 1", expansions)
	}
	slices.Sort(got)
	want := slices.Clone(all)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("shares hold %d tokens, want the %d targets once each", len(got), len(want))
	}
	if len(f.m) != 0 {
		t.Errorf("%d entries left after every partition took its share", len(f.m))
	}
	// Partitions that never ask: bounded.
	for seq := uint64(100); seq < 100+3*fanoutEntries; seq++ {
		f.tokens(seq, 0, parts, parts, expand)
	}
	if len(f.m) > fanoutEntries {
		t.Errorf("%d entries kept, bound %d", len(f.m), fanoutEntries)
	}
}
