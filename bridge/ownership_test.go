package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestRendezvousSpreads checks the assignment is balanced for similar
// instance names (host-pid-random differ in a few bytes), bounded to
// ⌈partitions/members⌉ each, and moves few partitions when a member joins;
// plain rendezvous (a member of an earlier release alive) moves only those
// the new member takes.
func TestRendezvousSpreads(t *testing.T) {
	const parts = 32
	members := []string{"vm-7098-58d4a0", "vm-7098-5362b1", "vm-7099-5362b2"}
	joined := append(members[:len(members):len(members)], "vm-7100-000001")
	for _, bounded := range []bool{false, true} {
		count := func(ms []string) map[string]int {
			c := map[string]int{}
			for _, m := range assignment(parts, ms, bounded) {
				c[m]++
			}
			return c
		}
		got := count(members)
		for _, m := range members {
			// 32/3 ≈ 10.7; plain: a share outside 5..17 would mean a
			// biased hash; bounded: 10 or 11.
			if got[m] < 5 || got[m] > 17 || bounded && (got[m] < 10 || got[m] > 11) {
				t.Errorf("bounded %v: %s owns %d of %d partitions with %d members: %v", bounded, m, got[m], parts, len(members), got)
			}
		}
		before, after := assignment(parts, members, bounded), assignment(parts, joined, bounded)
		moved := 0
		for p := range before {
			if before[p] != after[p] {
				moved++
				if !bounded && after[p] != "vm-7100-000001" {
					t.Errorf("partition %d moved from %s to %s, not to the new member", p, before[p], after[p])
				}
			}
		}
		if c := count(joined); bounded && c["vm-7100-000001"] != 8 {
			t.Errorf("bounded: the fourth member holds %d of 32, want 8: %v", c["vm-7100-000001"], c)
		}
		t.Logf("bounded %v: %v; a fourth member moved %d partitions", bounded, got, moved)
		if moved == 0 || moved > 16 {
			t.Errorf("bounded %v: a fourth member moved %d of %d partitions", bounded, moved, parts)
		}
	}
	if o := assignment(4, nil, true); o[3] != "" {
		t.Errorf("no members: got an owner")
	}
}

// TestStartIgnoresDeadMembers: a bridge's member key stays in WS_BRIDGES
// for the bucket's TTL after it died. A bridge starting beside it counted
// it alive for a whole lease TTL and left it its share, which nobody took
// (TestBridgesKeepOrder saw 4 s without pushes after a SIGTERM while a
// bridge joined). Keys that changed a lease TTL or more before the newest
// one, on the server's clock, are dead from the start.
func TestStartIgnoresDeadMembers(t *testing.T) {
	e := newEnv(t, nil)
	const ttl = 3 * time.Second
	ctx := context.Background()
	kv, err := e.js.CreateOrUpdateKeyValue(ctx, leaseBucketConfig(e.names, Options{LeaseTTL: ttl}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, subjects.MemberKey("ghost"), []byte("died")); err != nil {
		t.Fatal(err)
	}
	// A live member renews every ttl/4 while the ghost's key ages.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, _ = kv.Put(ctx, subjects.MemberKey("alive"), []byte("renewed"))
			select {
			case <-stop:
				return
			case <-time.After(ttl / 4):
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	time.Sleep(ttl + ttl/4)

	b := startBridge(t, Options{PushURL: e.tg.srv.URL, LeaseTTL: ttl}, Deps{Conn: connect(t, e.s), Logger: testLogger(t)})
	desired := b.own.assign(false)
	// "alive" writes no assign=bounded: plain rendezvous, as with a
	// bridge of an earlier release.
	want := assignment(len(desired), []string{b.id, "alive"}, false)
	withGhost := 0
	for _, owner := range assignment(len(desired), []string{b.id, "alive", "ghost"}, false) {
		if owner == "ghost" {
			withGhost++
		}
	}
	for p, mine := range desired {
		want := want[p] == b.id
		if mine != want {
			t.Fatalf("partition %d: assigned to this bridge %v, want %v (the ghost counted as a member?)", p, mine, want)
		}
	}
	t.Logf("the dead member would have been left %d of %d partitions", withGhost, len(desired))
}
