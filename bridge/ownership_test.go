package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

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
	for p, mine := range desired {
		want := rendezvous(p, []string{b.id, "alive"}) == b.id
		if mine != want {
			t.Fatalf("partition %d: assigned to this bridge %v, want %v (the ghost counted as a member?)", p, mine, want)
		}
	}
	withGhost := 0
	for p := range desired {
		if rendezvous(p, []string{b.id, "alive", "ghost"}) == "ghost" {
			withGhost++
		}
	}
	t.Logf("the dead member would have been left %d of %d partitions", withGhost, len(desired))
}
