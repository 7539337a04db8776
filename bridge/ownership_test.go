package bridge

import "testing"

// TestRendezvousSpreads checks the assignment is balanced for similar
// instance names (host-pid-random differ in a few bytes) and moves only the
// partitions it must when a member joins.
func TestRendezvousSpreads(t *testing.T) {
	const parts = 32
	members := []string{"vm-7098-58d4a0", "vm-7098-5362b1", "vm-7099-5362b2"}
	count := func(ms []string) map[string]int {
		c := map[string]int{}
		for p := 0; p < parts; p++ {
			c[rendezvous(p, ms)]++
		}
		return c
	}
	got := count(members)
	for _, m := range members {
		// 32/3 ≈ 10.7; a share outside 5..17 would mean a biased hash.
		if got[m] < 5 || got[m] > 17 {
			t.Errorf("%s owns %d of %d partitions with %d members: %v", m, got[m], parts, len(members), got)
		}
	}
	joined := append(members[:len(members):len(members)], "vm-7100-000001")
	moved := 0
	for p := 0; p < parts; p++ {
		before, after := rendezvous(p, members), rendezvous(p, joined)
		if before != after {
			moved++
			if after != "vm-7100-000001" {
				t.Errorf("partition %d moved from %s to %s, not to the new member", p, before, after)
			}
		}
	}
	if moved == 0 || moved > 16 {
		t.Errorf("a fourth member took %d of %d partitions", moved, parts)
	}
	if rendezvous(3, nil) != "" {
		t.Errorf("no members: got an owner")
	}
}
