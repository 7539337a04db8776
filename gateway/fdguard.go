package gateway

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Every WebSocket costs the process one file descriptor, and so does every
// other socket, file and pipe it has. A process out of descriptors cannot
// accept (EMFILE): a new client's connection waits in the kernel's backlog
// until it gives up, and so does a probe of /healthz, which then restarts an
// instance that was only full. So:
//
//   - at start the connection cap is clamped to what the descriptor limit
//     leaves (the soft RLIMIT_NOFILE, first raised to the hard one) once a
//     reserve is set aside for everything else: NATS, pushes, the ops
//     listener, the function binaries, sockets not upgraded yet. Past the
//     cap a client gets 503 at once.
//   - should descriptors run out all the same (the reserve spent on pushes
//     or idle sockets), each listener holds a few descriptors in reserve
//     (spares): an accept that fails for want of one closes a spare and
//     accepts again. The client and push listeners answer that connection
//     503 and close it; the ops listener serves it, so /healthz and /metrics
//     keep answering. Without a spare, accepts are retried with a backoff.
//     Either way it is counted (accept_errors_total) and logged at warn, at
//     most once per capLogEvery.

const (
	// fdReserveBase is the part of the reserve for the process itself: its
	// NATS connection, the function binaries and their pipes and sockets,
	// the listeners, the spares, files, a few ops and push requests.
	fdReserveBase = 128
	// fdMinConnections is the least cap a descriptor limit may leave: a
	// limit lower than the reserve plus this fails the start.
	fdMinConnections = 16
	// Spares per listener.
	sparesClient = 4
	sparesPush   = 2
	sparesOps    = 4
	// acceptBackoffMost caps the pause between accepts while no spare is
	// left.
	acceptBackoffMost = 250 * time.Millisecond
	// refuseWait bounds the time a connection answered from a spare is
	// read after its answer, so the close does not reset the answer away:
	// short, since the spare is lent meanwhile, and a socket that sends
	// nothing (a flood of idle ones) must not hold it up.
	refuseWait = 50 * time.Millisecond
	// spareGrace is how long a connection served on a spare may stay
	// silent before an accept may close it for its descriptor.
	spareGrace = 500 * time.Millisecond
)

// fdReserve is how many descriptors the connection cap leaves for all but
// the WebSockets: fdReserveBase, and a quarter of MaxHTTPConnections for
// sockets not upgraded yet (handshakes, refusals, pushes, scrapes). More of
// those than that is what the spares are for.
func (o Options) fdReserve() int {
	return fdReserveBase + o.MaxHTTPConnections/4
}

// clampToFiles clamps MaxConnections to the descriptor limit less the
// reserve, and says so. It runs before anything is served.
func (g *Gateway) clampToFiles() error {
	soft, hard, raised, err := fileLimit()
	if err != nil {
		g.log.Warn("file descriptor limit unknown: the connection cap is not checked against it", "err", err)
		return nil
	}
	if raised {
		g.log.Info("file descriptor limit raised to the hard limit", "fd_limit", soft)
	}
	reserve := g.opts.fdReserve()
	room := int64(soft) - int64(reserve)
	if room < fdMinConnections {
		return fmt.Errorf("gateway: the file descriptor limit (RLIMIT_NOFILE %d, hard %d) leaves %d for connections after a reserve of %d; raise it (LimitNOFILE=, ulimit -n)",
			soft, hard, max(room, 0), reserve)
	}
	asked := g.opts.MaxConnections
	if int64(asked) <= room {
		g.log.Info("connection cap within the file descriptor limit", "max_connections", asked,
			"fd_limit", soft, "fd_hard_limit", hard, "fd_reserve", reserve)
		return nil
	}
	g.opts.MaxConnections = int(room)
	g.log.Warn("connection cap clamped to the file descriptor limit less a reserve; raise the limit to hold more",
		"max_connections", asked, "effective_max_connections", room,
		"fd_limit", soft, "fd_hard_limit", hard, "fd_reserve", reserve)
	return nil
}

// fdGuard is a listener that keeps accepting when the process is out of
// descriptors, with spares held for that.
type fdGuard struct {
	net.Listener
	g    *Gateway
	name string
	// refuse is the answer of a connection accepted on a spare, which is
	// then closed; nil: it is served (the ops listener).
	refuse []byte

	mu     sync.Mutex
	spares []*os.File
	want   int                     // spares to hold
	lent   map[*spareConn]struct{} // connections served on a spare, open
	every  rate.Sometimes
}

func (g *Gateway) guardFiles(ln net.Listener, name string, spares int, refuse []byte) *fdGuard {
	l := &fdGuard{Listener: ln, g: g, name: name, refuse: refuse, want: spares, lent: map[*spareConn]struct{}{},
		every: rate.Sometimes{Interval: capLogEvery}}
	l.refill()
	return l
}

// refuseHTTP is a complete HTTP answer for a client turned away from a
// spare: the body is the gateway's own reply shape.
func refuseHTTP(msg string) []byte {
	body := fmt.Sprintf(`{"errNo":503,"errMsg":%q}`, msg)
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 5\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// refill opens spares until it holds want (as many as the process can).
func (l *fdGuard) refill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.spares) < l.want {
		f, err := openSpare()
		if err != nil {
			return
		}
		l.spares = append(l.spares, f)
	}
}

// spend closes one spare, freeing its descriptor; false when none is left.
// With none left, a connection served on a spare that has sent nothing
// for spareGrace since it was accepted (an idle socket, not a probe) is
// closed to make room: idle sockets cannot keep /healthz from answering.
func (l *fdGuard) spend() bool {
	l.mu.Lock()
	if len(l.spares) == 0 {
		var idle *spareConn
		for c := range l.lent {
			if !c.active.Load() && time.Since(c.since) > spareGrace {
				idle = c
				break
			}
		}
		l.mu.Unlock()
		if idle == nil {
			return false
		}
		_ = idle.Close() // gives its descriptor back as a spare
		l.mu.Lock()
	}
	defer l.mu.Unlock()
	n := len(l.spares)
	if n == 0 {
		return false
	}
	_ = l.spares[n-1].Close()
	l.spares = l.spares[:n-1]
	return true
}

func (l *fdGuard) Accept() (net.Conn, error) {
	pause := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			l.refill()
			return c, nil
		}
		if !outOfFiles(err) {
			return nil, err
		}
		l.g.m.acceptErrors.WithLabelValues(l.name).Inc()
		spent := l.spend()
		l.every.Do(func() {
			l.g.log.Warn("out of file descriptors: accepting on a spare (counted in accept_errors_total); raise the limit or lower --max-connections",
				"listener", l.name, "err", err, "spare", spent, "max_connections", l.g.opts.MaxConnections)
		})
		if spent {
			c, err = l.Listener.Accept()
			if err == nil {
				pause = 5 * time.Millisecond
				if l.refuse == nil {
					sc := &spareConn{Conn: c, l: l, since: time.Now()}
					l.mu.Lock()
					l.lent[sc] = struct{}{}
					l.mu.Unlock()
					return sc, nil
				}
				go l.turnAway(c)
				continue
			}
			l.refill()
			if !outOfFiles(err) {
				return nil, err
			}
		}
		time.Sleep(pause)
		pause = min(2*pause, acceptBackoffMost)
	}
}

// Close closes the listener and its spares.
func (l *fdGuard) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	for _, f := range l.spares {
		_ = f.Close()
	}
	l.spares, l.want = nil, 0
	l.mu.Unlock()
	return err
}

// turnAway answers a connection accepted on a spare with refuse at once
// and closes it, once its request is read (or refuseWait has passed), so
// the close does not reset the answer away.
func (l *fdGuard) turnAway(c net.Conn) {
	defer l.refill()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(refuseWait))
	if _, err := c.Write(l.refuse); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// spareConn is a connection the ops listener accepted on a spare: its
// close makes room for the spare again.
type spareConn struct {
	net.Conn
	l      *fdGuard
	once   sync.Once
	since  time.Time   // accepted
	active atomic.Bool // it sent something
}

func (c *spareConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.active.Store(true)
	}
	return n, err
}

func (c *spareConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.lent, c)
		c.l.mu.Unlock()
		c.l.refill()
	})
	return err
}
