package gateway

import (
	"context"
	"net/http"
	"time"
)

// registerStatus is the HTTP status of an upgrade the register function
// answered with a non-zero errNo: a refusal (403) unless the errNo says the
// fault is the server's (500-599, as the functions answer when NATS or
// their configuration fails), which is answered as such, so the client
// tries again later instead of taking it for a verdict.
func registerStatus(errNo int) int {
	if errNo >= 500 && errNo <= 599 {
		return errNo
	}
	return http.StatusForbidden
}

// maxUnforgotten bounds the failed registrations waiting for their cleanup
// to be taken; past it the registry's TTL is their only safety net.
const maxUnforgotten = 10000

// forgetFailed makes sure a registration that failed leaves no registry
// record. A register function that failed on NATS may have stored the
// record before it failed, and could not delete it in the invocation's
// time; the cleanup function deletes it (announcing the disconnect if it
// did) and is tried again, with a growing pause, until it succeeds or the
// gateway stops.
func (g *Gateway) forgetFailed(id string) {
	g.forgetMu.Lock()
	if len(g.unforgotten) >= maxUnforgotten {
		g.forgetMu.Unlock()
		g.log.Warn("failed registration not cleaned up: too many waiting; the registry TTL removes its record", "conn", id, "waiting", maxUnforgotten)
		return
	}
	g.unforgotten[id] = struct{}{}
	g.forgetMu.Unlock()
	g.forgetOnce.Do(func() { go g.forgetLoop() })
	select {
	case g.forgetKick <- struct{}{}:
	default:
	}
}

// forgetLoop invokes cleanup for the failed registrations until each one
// succeeds, pausing 100 ms to 5 s between rounds that left some.
func (g *Gateway) forgetLoop() {
	const first, most = 100 * time.Millisecond, 5 * time.Second
	pause := first
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-g.done:
			g.forgetMu.Lock()
			n := len(g.unforgotten)
			g.forgetMu.Unlock()
			if n > 0 {
				g.log.Warn("stopping with failed registrations not cleaned up; the registry TTL removes their records", "connections", n)
			}
			return
		case <-g.forgetKick:
		case <-t.C:
		}
		g.forgetMu.Lock()
		ids := make([]string, 0, len(g.unforgotten))
		for id := range g.unforgotten {
			ids = append(ids, id)
		}
		g.forgetMu.Unlock()
		left := 0
		for _, id := range ids {
			if g.isClosed() {
				break
			}
			if _, err := g.invoke(context.Background(), "cleanup", g.opts.Cleanup, newClosingEvent(id)); err != nil {
				g.log.Debug("cleanup of a failed registration failed; trying again", "conn", id, "err", err)
				left++
				continue
			}
			g.forgetMu.Lock()
			delete(g.unforgotten, id)
			g.forgetMu.Unlock()
		}
		if left == 0 {
			pause = first
			continue
		}
		t.Reset(pause)
		pause = min(2*pause, most)
	}
}
