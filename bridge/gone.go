package bridge

import (
	"sync"
	"time"
)

// goneTTL and goneMax bound what the bridge remembers of connections the
// gateway answered gone (404 or 410): for goneTTL after the answer, at most
// goneMax of them (about 100 bytes each), the oldest forgotten first.
const (
	goneTTL = 10 * time.Minute
	goneMax = 100_000
)

// goneSet remembers the connections a gateway answered gone, so that the
// rest of such a connection's backlog is dead-lettered without a push
// each. A connection's token is never reused, so gone stays gone; a
// backend that keeps sending to a closed connection costs one push, not
// one per message, and a partition holding thousands of commands for
// connections that left drains at the speed of its dead letters.
type goneSet struct {
	mu    sync.Mutex
	m     map[string]goneEntry
	order []string // tokens in the order they were added, for eviction
}

type goneEntry struct {
	at     time.Time
	status int
}

func newGoneSet() *goneSet { return &goneSet{m: map[string]goneEntry{}} }

// add records that token was answered gone with status at at.
func (g *goneSet) add(token string, status int, at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.m[token]; ok {
		return
	}
	g.m[token] = goneEntry{at: at, status: status}
	g.order = append(g.order, token)
	for len(g.order) > 0 {
		oldest := g.order[0]
		if len(g.order) <= goneMax && at.Sub(g.m[oldest].at) < goneTTL {
			break
		}
		delete(g.m, oldest)
		g.order[0] = ""
		g.order = g.order[1:]
	}
}

// seen reports whether token was answered gone within goneTTL before now,
// and how.
func (g *goneSet) seen(token string, now time.Time) (goneEntry, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.m[token]
	if !ok || now.Sub(e.at) >= goneTTL {
		return goneEntry{}, false
	}
	return e, true
}
