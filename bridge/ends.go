package bridge

import (
	"context"
	"sync"
	"time"
)

// endGrace is how long the bridge waits, after a push found a connection
// gone or closed it, before it announces the connection's end itself. The
// connection's own end (the gateway's cleanup function, or wsbridge
// gateway) announces it within moments, storing the event before deleting
// the record (subjects.Names.Forget); announcing at once, the bridge would
// find the record still there and publish a second event: WS_IN keeps one
// (the same Nats-Msg-Id), but a plain subscriber to ws.in.> saw two, the
// second with the bridge's reason. After the grace the record is normally
// gone and the bridge has nothing to do; it is still there only when no
// cleanup ran (a gateway that lost it), which is what the bridge's
// announcement is for.
const endGrace = 3 * time.Second

// maxPendingEnds bounds the ends waiting out their grace; past it an end
// is announced at once.
const maxPendingEnds = 100_000

type pendingEnd struct {
	token, reason string
	due           time.Time
}

// ends holds connection ends waiting out endGrace, in the order they were
// seen (the grace is the same for all, so that is the order they are due).
type ends struct {
	b      *Bridge
	mu     sync.Mutex
	q      []pendingEnd
	head   int
	closed bool
	wake   chan struct{}
}

func newEnds(b *Bridge) *ends { return &ends{b: b, wake: make(chan struct{}, 1)} }

// add announces token's end, with reason, after endGrace.
func (e *ends) add(token, reason string) {
	e.mu.Lock()
	if e.closed || len(e.q)-e.head >= maxPendingEnds {
		e.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.b.announce(ctx, token, reason)
		return
	}
	e.q = append(e.q, pendingEnd{token, reason, time.Now().Add(endGrace)})
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// next takes the first end if it is due; otherwise it reports how long
// until it is (-1: none waiting).
func (e *ends) next(now time.Time) (pendingEnd, time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.head == len(e.q) {
		e.q, e.head = e.q[:0], 0
		return pendingEnd{}, -1
	}
	p := e.q[e.head]
	if wait := p.due.Sub(now); wait > 0 {
		return pendingEnd{}, wait
	}
	e.q[e.head] = pendingEnd{}
	e.head++
	if e.head > 1024 && e.head > len(e.q)/2 {
		e.q = append(e.q[:0], e.q[e.head:]...)
		e.head = 0
	}
	return p, 0
}

// run announces ends as they fall due until quit; then it announces the
// ones still waiting at once (the bridge is stopping: a cleanup that has
// not come by now is not waited for), within a few seconds in all.
func (e *ends) run(quit <-chan struct{}) {
	defer e.b.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p, wait := e.next(time.Now())
		switch {
		case wait == 0:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			e.b.announce(ctx, p.token, p.reason)
			cancel()
			continue
		case wait > 0:
			timer.Reset(wait)
		}
		var fire <-chan time.Time
		if wait > 0 {
			fire = timer.C
		}
		select {
		case <-fire:
		case <-e.wake:
		case <-quit:
			e.drain()
			return
		}
	}
}

func (e *ends) drain() {
	e.mu.Lock()
	e.closed = true
	left := e.q[e.head:]
	e.q, e.head = nil, 0
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, p := range left {
		if ctx.Err() != nil {
			e.b.log.Warn("stopping: connection ends not announced by this bridge; their cleanup or the registry's expiry ends them",
				"count", len(left)-i)
			return
		}
		e.b.announce(ctx, p.token, p.reason)
	}
}
