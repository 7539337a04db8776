package gateway

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// The janitor's deadline buckets. Every accepted connection waits in one
// bucket: the tick at which something may be due for it (its ping, its
// pong's deadline, its idle timeout). Each tick the janitor takes the
// connections of that tick's bucket, does what is due and puts each back in
// the bucket of its next deadline. Traffic only stores the time of the last
// frame (conn.last); a connection whose frames pushed its deadline back is
// simply put in a later bucket when its old one comes up. So the janitor
// looks at a connection about once per ping interval whatever the count, a
// tick costs what is due in it, and every quiet connection is pinged in the
// first tick at or after its interval ran out.
//
// The buckets are split over wheelShards locks, each connection in the
// shard chosen when it was accepted: a shard's lock is held for one bucket
// of that shard (or one connection coming or going), never for every
// connection.
const (
	wheelShards = 64
	// wheelSlots is how many ticks ahead a deadline can be placed; a later
	// one waits in the farthest bucket and is placed again from there.
	wheelSlots = 128
	// pingers write pings and end connections whose pong is missing, so a
	// client whose socket does not take its ping at once (at most 5 s, the
	// library's bound on a control frame) holds up one of them, not the
	// janitor.
	pingers = 8
	// pingQueue bounds the pings decided and not yet written.
	pingQueue = 4096
)

// wheel is the janitor's state: the buckets, and the pingers' queue.
type wheel struct {
	g      *Gateway
	tick   int64         // ns per bucket
	every  int64         // PingInterval in ns; 0: no pings
	idle   int64         // IdleTimeout in ns
	cur    atomic.Int64  // the next tick to sweep, counted from the gateway's epoch
	next   atomic.Uint32 // round robin over the shards
	shards [wheelShards]wheelShard
	jobs   chan pingJob // made when the janitor starts

	// Recorded for the metrics and tests.
	pings    atomic.Uint64 // pings written
	behind   atomic.Uint64 // pings decided in a later tick than the first one at or after their due time
	lockHold atomic.Int64  // longest hold of a shard's lock, ns
	lateHist func(float64) // observes a ping's lateness, seconds
	holdHist func(float64) // observes each hold of a shard's lock, seconds
}

// wheelShard is one lock's share of the buckets.
type wheelShard struct {
	mu    sync.Mutex
	slots [wheelSlots]*conn // heads of each bucket's list; guarded by mu
	batch []pingJob         // what a sweep hands the pingers; the janitor's alone
}

// pingJob is a ping to write (due: when the connection's quiet interval ran
// out), or with end set a connection to end for want of a pong.
type pingJob struct {
	c   *conn
	due int64
	end bool
}

func newWheel(g *Gateway, lateHist, holdHist func(float64)) *wheel {
	w := &wheel{g: g, tick: int64(g.tickEvery()), idle: int64(g.opts.IdleTimeout), lateHist: lateHist, holdHist: holdHist}
	if g.opts.PingInterval > 0 {
		w.every = int64(g.opts.PingInterval)
	}
	w.cur.Store(g.since()/w.tick + 1)
	return w
}

// slotOf is the tick whose bucket a deadline at d (ns since the epoch) goes
// in: the first tick at or after it, within the buckets ahead of cur.
func (w *wheel) slotOf(d, cur int64) int64 {
	t := (d + w.tick - 1) / w.tick
	return min(max(t, cur), cur+wheelSlots-1)
}

// add puts a connection just accepted in the wheel.
func (w *wheel) add(c *conn) {
	c.ponged.Store(c.pinged.Load())
	sh := w.next.Add(1) % wheelShards
	c.wshard = uint8(sh)
	s := &w.shards[sh]
	s.mu.Lock()
	// cur is read under the lock: the janitor moves it on before it sweeps
	// any shard, so a bucket this picks has not been swept yet.
	s.link(c, w.slotOf(w.deadline(c), w.cur.Load()))
	s.mu.Unlock()
}

// remove takes an ended connection out of the wheel, if it is there.
func (w *wheel) remove(c *conn) {
	s := &w.shards[c.wshard]
	s.mu.Lock()
	s.unlink(c)
	s.mu.Unlock()
}

// link puts c in the bucket of tick t. mu is held.
func (s *wheelShard) link(c *conn, t int64) {
	i := t % wheelSlots
	c.wslot = int32(i) + 1
	c.wprev, c.wnext = nil, s.slots[i]
	if c.wnext != nil {
		c.wnext.wprev = c
	}
	s.slots[i] = c
}

// unlink takes c out of its bucket, if it is in one. mu is held.
func (s *wheelShard) unlink(c *conn) {
	if c.wslot == 0 {
		return
	}
	if c.wprev != nil {
		c.wprev.wnext = c.wnext
	} else {
		s.slots[c.wslot-1] = c.wnext
	}
	if c.wnext != nil {
		c.wnext.wprev = c.wprev
	}
	c.wprev, c.wnext, c.wslot = nil, nil, 0
}

// deadline is when something may next be due for c: its idle timeout, and
// its pong's deadline or its next ping.
func (w *wheel) deadline(c *conn) int64 {
	last := c.last.Load()
	d := last + w.idle
	if w.every > 0 {
		pinged := c.pinged.Load()
		if pinged > c.ponged.Load() {
			d = min(d, pinged+w.every)
		} else {
			d = min(d, max(last, pinged)+w.every)
		}
	}
	return d
}

// advance does what is due up to now, bucket by bucket: each tick from cur
// to now's, shard by shard, holding a shard's lock for one bucket.
func (w *wheel) advance(now int64) {
	end := now / w.tick
	for t := w.cur.Load(); t <= end; t++ {
		w.cur.Store(t + 1)
		for i := range w.shards {
			w.sweep(&w.shards[i], t, now)
		}
	}
}

// sweep handles the bucket of tick t of one shard.
func (w *wheel) sweep(s *wheelShard, t, now int64) {
	slotTime := t * w.tick
	cur := t + 1
	var idle []*conn
	s.mu.Lock()
	start := time.Now()
	c := s.slots[t%wheelSlots]
	s.slots[t%wheelSlots] = nil
	for c != nil {
		next := c.wnext
		c.wprev, c.wnext, c.wslot = nil, nil, 0
		w.visit(s, c, now, slotTime, cur, &idle)
		c = next
	}
	batch := s.batch
	s.batch = s.batch[:0]
	held := time.Since(start)
	s.mu.Unlock()
	if d := int64(held); d > w.lockHold.Load() {
		w.lockHold.Store(d)
	}
	w.holdHist(held.Seconds())
	for _, c := range idle {
		w.g.log.Debug("closing idle connection", "conn", c.id)
		go c.close(statusGoingAway, "idle timeout", discIdle)
	}
	for _, j := range batch {
		select {
		case w.jobs <- j:
		case <-w.g.done:
			return
		}
	}
	clear(batch)
}

// visit decides what is due for c at now and puts it back in the bucket of
// its next deadline; s.mu is held and c is in no bucket.
func (w *wheel) visit(s *wheelShard, c *conn, now, slotTime, cur int64, idle *[]*conn) {
	if c.closing.Load() {
		return // ending: its reader removes it
	}
	last := c.last.Load()
	if now-last >= w.idle {
		*idle = append(*idle, c)
		return
	}
	if w.every > 0 {
		pinged := c.pinged.Load()
		switch {
		case pinged > c.ponged.Load():
			if now-pinged >= w.every {
				s.batch = append(s.batch, pingJob{c: c, end: true})
				return
			}
		case now-max(last, pinged) >= w.every:
			due := max(last, pinged) + w.every
			if slotTime-due >= w.tick {
				w.behind.Add(1)
			}
			c.pinged.Store(now)
			s.batch = append(s.batch, pingJob{c: c, due: due})
		}
	}
	s.link(c, w.slotOf(w.deadline(c), cur))
}

// run is the janitor: it advances the wheel every tick until the gateway
// closes, and runs the pingers.
func (w *wheel) run() {
	w.jobs = make(chan pingJob, pingQueue)
	for range pingers {
		go w.ping()
	}
	// Each bucket is swept at its tick's time, not up to a tick later as
	// a ticker of its own phase would.
	t := time.NewTimer(w.untilNext())
	defer t.Stop()
	for {
		select {
		case <-w.g.done:
			return
		case <-t.C:
		}
		w.advance(w.g.since())
		t.Reset(w.untilNext())
	}
}

// untilNext is the time until the next bucket is due.
func (w *wheel) untilNext() time.Duration {
	return time.Duration(max(w.cur.Load()*w.tick-w.g.since(), 0))
}

// ping writes the jobs the janitor hands over until the gateway closes.
func (w *wheel) ping() {
	for {
		select {
		case <-w.g.done:
			return
		case j := <-w.jobs:
			if j.end {
				w.endSilent(j.c)
				continue
			}
			// The pong's deadline counts from the write (stored before it:
			// the pong cannot come sooner).
			j.c.pinged.Store(w.g.since())
			j.c.sendPing()
			w.pings.Add(1)
			j.c.pings.Add(1)
			w.lateHist(float64(w.g.since()-j.due) / float64(time.Second))
		}
	}
}

// endSilent ends a connection whose pong had not come by its deadline (a
// pong since then does not save it: the janitor took it out of the wheel).
// Like conn.close, but without a handshake the client is not answering:
// the first closer's reason stands.
func (w *wheel) endSilent(c *conn) {
	if !c.closing.CompareAndSwap(false, true) {
		return // ending anyway
	}
	w.g.log.Debug("closing connection: no pong", "conn", c.id, "ping_interval", w.g.opts.PingInterval)
	c.why.Store(reasonIndex(discPing))
	_ = c.ws.CloseNow()
}

// sendPing writes a ping frame and returns once it is written (or failed):
// the pong is recorded by the connection's reader (conn.ponged), and the
// janitor ends the connection when it has not come by the deadline.
//
// coder/websocket's Ping writes the frame under a context it derives from
// the one given (with its own 5 s bound) and then waits for the pong or for
// that context to end. writtenCtx ends at the moment the derived context is
// let go of, that is once the write returned, so Ping returns then: no
// goroutine waits for a pong. Should a later version not derive a context,
// Ping waits for the pong or for the connection to end, which the
// janitor's deadline bounds.
func (c *conn) sendPing() {
	ctx := &writtenCtx{done: make(chan struct{})}
	// Ping's error once the frame is written is the end of ctx.
	if err := c.ws.Ping(ctx); err != nil && !errors.Is(err, context.Canceled) {
		c.g.log.Debug("ping not written", "conn", c.id, "err", err)
	}
}

// writtenCtx is a context that ends when a context derived from it ends.
// The context package registers a derived context through AfterFunc, when
// the parent has that method, and calls the stop function it returned when
// the derived context is cancelled.
type writtenCtx struct {
	done chan struct{}
	once sync.Once
}

func (p *writtenCtx) Done() <-chan struct{}                   { return p.done }
func (p *writtenCtx) Deadline() (deadline time.Time, ok bool) { return time.Time{}, false }
func (p *writtenCtx) Value(any) any                           { return nil }

func (p *writtenCtx) Err() error {
	select {
	case <-p.done:
		return context.Canceled
	default:
		return nil
	}
}

// AfterFunc never runs f (writtenCtx ends only through stop, when the
// derived context is done already); stop ends writtenCtx.
func (p *writtenCtx) AfterFunc(f func()) (stop func() bool) {
	return func() bool {
		p.once.Do(func() { close(p.done) })
		return true
	}
}
