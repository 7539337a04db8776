package bridge

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// Ownership of partitions.
//
// Bridges announce themselves in the KV bucket WS_BRIDGES (key m.<id>,
// rewritten every LeaseTTL/4) and hold one lease per partition they work
// (key p.<n>, value the owner's id, rewritten every LeaseTTL/4 with a
// compare-and-set on the revision they wrote last). Every bridge watches
// the bucket and computes the same assignment from the members it sees
// alive: rendezvous hashing of each partition over them, bounded so that
// no bridge gets more than ⌈partitions/N⌉ (plain rendezvous gave 13, 10
// and 9 of 32 to three bridges, and the one with 13 set the pace). A
// bridge's membership says it assigns this way; while a member alive does
// not (an earlier release, in a rolling upgrade), every bridge assigns by
// plain rendezvous, so all agree.
//
// No clock is trusted across machines. A member or lease is alive while its
// key changed within LeaseTTL on the watcher's own clock. The owner stops
// pushing at three quarters of LeaseTTL after it sent its last successful
// renewal (the fence); a taker acts on a lease only a full LeaseTTL after it
// saw the last change, which it saw after it was sent. The taker then
// claims the partition's position in the outbound log (a compare-and-set,
// so a previous owner's late commit fails: a second fence) and starts right
// after what was resolved. A clean hand-off (stop, rebalance) lets its
// pushes finish, commits, and deletes the lease, and the taker starts at
// once, repeating nothing.

// instanceID names this bridge in the leases: host, pid and a random
// suffix, since containers reuse both host names and pids.
func instanceID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '-'
	}, host)
	if host == "" {
		host = "bridge"
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:])
}

// seenKey is the last state of a WS_BRIDGES key this bridge saw.
type seenKey struct {
	rev   uint64
	value string
	gone  bool      // deleted or purged
	at    time.Time // local time it was seen
}

// lease is a partition this bridge holds.
type lease struct {
	rev      uint64
	part     *part
	leaving  bool // being handed off or dropped
	released bool // stopped: no more renewals
}

// owner keeps this bridge's membership and leases; its state is guarded by
// its own lock.
type owner struct {
	b      *Bridge
	kv     jetstream.KeyValue
	id     string
	ttl    time.Duration
	count  int
	kick   chan struct{}
	leaves sync.WaitGroup // hand-offs and drops in progress

	mu      sync.Mutex
	seen    map[string]seenKey
	owned   map[int]*lease
	lastOK  time.Time // last successful heartbeat
	leaving bool      // stopping: hand everything off
}

func newOwner(b *Bridge, kv jetstream.KeyValue) *owner {
	return &owner{b: b, kv: kv, id: b.id, ttl: b.opts.LeaseTTL, count: b.opts.Partitions,
		kick: make(chan struct{}, 1), seen: map[string]seenKey{}, owned: map[int]*lease{}}
}

// LeaseBucketConfig is the configuration of the WS_BRIDGES bucket: keys
// of members and leases that stop changing age out.
func leaseBucketConfig(n subjects.Names, o Options) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      n.Leases(),
		Description: "wsbridge bridges: members and partition leases",
		History:     1,
		TTL:         max(time.Minute, 20*o.LeaseTTL),
		Replicas:    o.Streams.Replicas,
		Storage:     jetstream.FileStorage,
	}
}

func (o *owner) poke() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// watch records every change of the bucket with the local time it was seen.
func (o *owner) watch(w jetstream.KeyWatcher, synced chan<- struct{}) {
	defer o.b.wg.Done()
	defer func() { _ = w.Stop() }()
	var snapshot []jetstream.KeyValueEntry
	for {
		select {
		case <-o.b.bgCtx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if synced != nil {
					o.forgetDeadMembers(snapshot)
					snapshot = nil
					close(synced)
					synced = nil
				}
				continue
			}
			gone := e.Operation() != jetstream.KeyValuePut
			_, member := subjects.MemberKeyID(e.Key())
			o.mu.Lock()
			prev, known := o.seen[e.Key()]
			o.seen[e.Key()] = seenKey{rev: e.Revision(), value: string(e.Value()), gone: gone, at: time.Now()}
			if synced != nil {
				snapshot = append(snapshot, e)
			}
			o.mu.Unlock()
			// A release, or a member that appears or leaves: look again
			// now rather than at the next tick. Not on renewals, which
			// every bridge makes every tick.
			if gone && !prev.gone || member && (!known || prev.gone) && !gone {
				o.poke()
			}
		}
	}
}

// run renews and rebalances every LeaseTTL/4 and whenever the bucket shows
// a release or a member change, until the bridge's background context ends.
func (o *owner) run(first chan<- struct{}) {
	defer o.b.wg.Done()
	t := time.NewTicker(o.ttl / 4)
	defer t.Stop()
	for {
		o.round()
		if first != nil {
			close(first)
			first = nil
		}
		select {
		case <-o.b.bgCtx.Done():
			return
		case <-t.C:
		case <-o.kick:
		}
	}
}

// round is one pass: heartbeat, renew, take, give.
func (o *owner) round() {
	b := o.b
	ctx, cancel := context.WithTimeout(b.bgCtx, o.ttl/2)
	defer cancel()
	o.mu.Lock()
	leaving := o.leaving
	o.mu.Unlock()
	if !leaving {
		if _, err := o.kv.Put(ctx, subjects.MemberKey(o.id), []byte(time.Now().UTC().Format(time.RFC3339)+" "+assignBounded)); err == nil {
			o.mu.Lock()
			o.lastOK = time.Now()
			o.mu.Unlock()
		} else if ctx.Err() == nil {
			b.log.Debug("heartbeat failed", "err", err)
		}
	}
	o.renew(ctx)
	if ctx.Err() != nil {
		return
	}
	desired := o.assign(leaving)
	before, _ := o.status()
	defer func() {
		if after, _ := o.status(); after != before {
			b.log.Info("partitions", "owned", after, "of", o.count)
		}
	}()
	// Takes are a round trip each: eight at a time (a bridge starting
	// alone takes every partition).
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for p := 0; p < o.count; p++ {
		o.mu.Lock()
		l := o.owned[p]
		o.mu.Unlock()
		switch {
		case desired[p] && l == nil:
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				o.take(ctx, p)
				<-sem
			}()
		case !desired[p] && l != nil && !l.leaving:
			o.give(p, l, true, "rebalance")
		}
	}
	wg.Wait()
}

// renew rewrites every held lease. One that another bridge took is dropped
// at once; one that cannot be confirmed before its fence is dropped too
// (its pushes are already withheld), as is one whose ack failed.
func (o *owner) renew(ctx context.Context) {
	o.mu.Lock()
	held := make(map[int]*lease, len(o.owned))
	for p, l := range o.owned {
		if !l.released {
			held[p] = l
		}
	}
	o.mu.Unlock()
	for p, l := range held {
		if l.part.broken.Load() {
			o.give(p, l, false, "position written by another bridge")
			continue
		}
		sent := o.b.since()
		rev, err := o.kv.Update(ctx, subjects.LeaseKey(p), []byte(o.id), l.rev)
		o.mu.Lock()
		switch {
		case err == nil:
			l.rev = rev
			o.seen[subjects.LeaseKey(p)] = seenKey{rev: rev, value: o.id, at: time.Now()}
			o.mu.Unlock()
			l.part.fence.Store(sent + int64(o.ttl)*3/4)
			continue
		case isConflict(err):
			o.mu.Unlock()
			if rev, ok := o.ours(ctx, p, l.rev); ok {
				// A renewal that timed out here was applied there: the
				// lease is still ours, at a newer revision.
				o.mu.Lock()
				l.rev = rev
				o.mu.Unlock()
				continue
			}
			o.give(p, l, false, "lease taken by another bridge")
			continue
		}
		o.mu.Unlock()
		if o.b.since() >= l.part.fence.Load() {
			o.give(p, l, false, "lease not renewed in time: "+err.Error())
		}
	}
}

// ours reports whether partition p's lease, found at another revision than
// the one this bridge last wrote (rev), still names this bridge: a renewal
// whose answer was lost (a timeout, a leader election) was applied. Only
// this bridge writes its own id, so the newer revision is its own.
func (o *owner) ours(ctx context.Context, p int, rev uint64) (uint64, bool) {
	e, err := o.kv.Get(ctx, subjects.LeaseKey(p))
	if err != nil || string(e.Value()) != o.id || e.Revision() < rev {
		return 0, false
	}
	return e.Revision(), true
}

// assignBounded, in a membership's value, says the bridge assigns
// partitions by bounded rendezvous.
const assignBounded = "assign=bounded"

// assign returns the partitions this bridge should work: the assignment
// of the members alive.
func (o *owner) assign(leaving bool) []bool {
	now := time.Now()
	o.mu.Lock()
	members := []string{}
	if !leaving {
		members = append(members, o.id)
	}
	bounded := true
	for k, s := range o.seen {
		id, ok := subjects.MemberKeyID(k)
		if !ok || id == o.id || s.gone || now.Sub(s.at) >= o.ttl {
			continue
		}
		members = append(members, id)
		bounded = bounded && strings.HasSuffix(s.value, " "+assignBounded)
	}
	o.mu.Unlock()
	out := make([]bool, o.count)
	if leaving {
		return out
	}
	for p, owner := range assignment(o.count, members, bounded) {
		out[p] = owner == o.id
	}
	return out
}

// assignment returns the owner of each of count partitions among members:
// the member ranked first by rendezvous hashing of (member, partition), or,
// bounded, the first in that ranking holding fewer than
// ⌈count/len(members)⌉, partitions taken in order. Every bridge computes
// the same from the same members. Nil members: no owners ("").
func assignment(count int, members []string, bounded bool) []string {
	owners := make([]string, count)
	if len(members) == 0 {
		return owners
	}
	limit := (count + len(members) - 1) / len(members)
	held := make(map[string]int, len(members))
	ranked := make([]ranking, len(members))
	for p := range owners {
		for i, m := range members {
			// SHA-256, not FNV: FNV of names that differ in a few bytes,
			// followed by the same partition bytes, orders the same way
			// for most partitions, and one member would win nearly all.
			sum := sha256.Sum256([]byte(m + "/" + strconv.Itoa(p)))
			ranked[i] = ranking{m, binary.BigEndian.Uint64(sum[:8])}
		}
		slices.SortFunc(ranked, func(a, b ranking) int {
			if c := cmp.Compare(b.h, a.h); c != 0 {
				return c
			}
			return cmp.Compare(b.member, a.member)
		})
		owners[p] = ranked[0].member
		if bounded {
			for _, r := range ranked {
				if held[r.member] < limit {
					owners[p] = r.member
					break
				}
			}
		}
		held[owners[p]]++
	}
	return owners
}

type ranking struct {
	member string
	h      uint64
}

// forgetDeadMembers marks dead the members of the bucket as found at start
// whose key changed LeaseTTL or more before the newest change in it: a
// member's key stays until the bucket's TTL after it died, and a bridge
// starting would otherwise count it alive for a whole LeaseTTL, assigning
// it partitions nobody takes. Both times are the server's, so no two
// clocks are compared. (Leases keep the whole LeaseTTL on this bridge's
// clock: that is the fence.)
func (o *owner) forgetDeadMembers(snapshot []jetstream.KeyValueEntry) {
	var newest time.Time
	for _, e := range snapshot {
		if e.Created().After(newest) {
			newest = e.Created()
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range snapshot {
		_, member := subjects.MemberKeyID(e.Key())
		if s, ok := o.seen[e.Key()]; ok && member && s.rev == e.Revision() && newest.Sub(e.Created()) >= o.ttl {
			s.at = time.Time{}
			o.seen[e.Key()] = s
		}
	}
}

// take acquires partition p's lease if it is free (never held, released)
// or expired on this bridge's clock, and starts working it.
func (o *owner) take(ctx context.Context, p int) {
	key := subjects.LeaseKey(p)
	o.mu.Lock()
	s, known := o.seen[key]
	o.mu.Unlock()
	clean := !known || s.gone
	sent := o.b.since()
	var rev uint64
	var err error
	switch {
	case clean:
		rev, err = o.kv.Create(ctx, key, []byte(o.id))
	case time.Since(s.at) >= o.ttl:
		rev, err = o.kv.Update(ctx, key, []byte(o.id), s.rev)
	default:
		return // held by a live bridge, which hands it off when it sees us
	}
	if err != nil {
		if !isConflict(err) && ctx.Err() == nil {
			o.b.log.Debug("lease not taken", "partition", p, "err", err)
		}
		return
	}
	pt := newPart(o.b, p)
	pt.fence.Store(sent + int64(o.ttl)*3/4)
	o.mu.Lock()
	o.owned[p] = &lease{rev: rev, part: pt}
	o.seen[key] = seenKey{rev: rev, value: o.id, at: time.Now()}
	n := len(o.owned)
	o.mu.Unlock()
	o.b.pm.Owned.Set(float64(n))
	o.b.pm.Rebalances.Inc()
	o.b.addPart(pt)
	prev := "free"
	if !clean {
		prev = "expired lease of " + s.value
	}
	o.leaves.Add(1)
	go func() {
		defer o.leaves.Done()
		o.start(pt, clean, prev)
	}()
}

// start begins working a partition just taken: it claims the partition's
// position and hands it to the log reader.
func (o *owner) start(pt *part, clean bool, prev string) {
	b := o.b
	var (
		pos       subjects.Position
		rev, last uint64
		err       error
	)
	for try := 0; try < 3; try++ {
		ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
		pos, rev, last, err = b.claim(ctx, pt.n)
		cancel()
		if err == nil || pt.stopping.Load() || b.bgCtx.Err() != nil {
			break
		}
	}
	if pt.stopping.Load() {
		return
	}
	if err != nil {
		b.log.Error("partition not started", "partition", pt.n, "err", err)
		pt.broken.Store(true)
		o.poke()
		return
	}
	if clean {
		last = 0 // handed off: nothing past the position was pushed
	}
	pt.begin(pos, rev, last)
	b.reader.kick()
	// Info either way: partitions move rarely (a bridge joining, leaving
	// or failing), and where each started is what explains a repeat.
	b.log.Info("partition taken", "partition", pt.n, "from", prev, "position", pos.Low())
}

// give stops working partition p: a hand-off lets its pushes finish,
// commits its position and deletes the lease for the next owner; otherwise
// (lost or unconfirmed) it lets everything go and leaves the lease to
// expire.
func (o *owner) give(p int, l *lease, handoff bool, why string) {
	o.mu.Lock()
	if l.leaving {
		o.mu.Unlock()
		return
	}
	l.leaving = true
	o.mu.Unlock()
	o.b.pm.Rebalances.Inc()
	if handoff {
		o.b.log.Debug("handing partition off", "partition", p, "why", why)
	} else {
		o.b.log.Warn("partition dropped", "partition", p, "why", why)
	}
	o.leaves.Add(1)
	go func() {
		defer o.leaves.Done()
		ctx, cancel := context.WithTimeout(context.Background(), o.b.opts.ShutdownTimeout)
		l.part.stop(ctx, handoff)
		cancel()
		o.b.removePart(l.part)
		o.mu.Lock()
		l.released = true
		o.mu.Unlock()
		if handoff {
			o.release(p, l)
		}
		o.mu.Lock()
		delete(o.owned, p)
		n := len(o.owned)
		o.mu.Unlock()
		o.b.pm.Owned.Set(float64(n))
		o.poke()
	}()
}

// release deletes the lease of a partition handed off, if it is still
// ours: the next owner may start at once. A renewal in flight may change
// the revision under it, so a mismatch is retried with the latest.
func (o *owner) release(p int, l *lease) {
	var err error
	for try := 0; try < 3; try++ {
		o.mu.Lock()
		rev := l.rev
		o.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = o.kv.Delete(ctx, subjects.LeaseKey(p), jetstream.LastRevision(rev))
		if err == nil || !isConflict(err) {
			cancel()
			break
		}
		// A renewal answered late (or not at all) but applied moved the
		// revision: still ours, release it at the one found.
		if cur, ok := o.ours(ctx, p, rev); ok {
			o.mu.Lock()
			l.rev = max(l.rev, cur)
			o.mu.Unlock()
		}
		cancel()
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		o.b.log.Warn("lease not released; it expires", "partition", p, "err", err)
	}
}

// leave hands every partition off and removes this bridge's member key; it
// returns when done or when ctx ends.
func (o *owner) leave(ctx context.Context) error {
	o.mu.Lock()
	o.leaving = true
	o.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_ = o.kv.Delete(dctx, subjects.MemberKey(o.id))
	cancel()
	o.poke()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		o.mu.Lock()
		n := len(o.owned)
		o.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop: %d partitions not handed off; their leases expire", n)
		case <-t.C:
		}
	}
}

// ownedCount is the number of partitions held, and whether the last
// heartbeat is recent.
func (o *owner) status() (owned int, heartbeatAge time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.lastOK.IsZero() {
		return len(o.owned), -1
	}
	return len(o.owned), time.Since(o.lastOK)
}
