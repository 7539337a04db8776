// Package connlimit bounds the TCP connections of an HTTP listener so that
// no one, and no one address, can take all of them.
//
// A listener at its cap used to close every new connection at once, so a
// few thousand idle sockets (a TLS handshake never started, a request line
// never sent, a keep-alive connection left idle) locked every other client
// out until the sockets' timeouts. Here a connection waiting for a request
// (silent since it was accepted, or idle between keep-alive requests) is the
// first to go: past a cap, the one that has waited longest is closed to make
// room (an HTTP server may close an idle connection at any time). Only when
// every connection is busy with a request, or upgraded, is a new one closed
// at once. And one peer address may hold at most PerAddr connections that
// are not upgraded, so one address cannot fill the listener even with busy
// ones.
package connlimit

import (
	"container/list"
	"net"
	"net/http"
	"net/netip"
	"sync"
)

// Options bound a Listener.
type Options struct {
	// Max bounds the connections open at once, upgraded (hijacked) ones
	// included: past it, a new connection takes the place of the one that
	// has waited longest for a request, or is closed at once.
	Max int
	// PerAddr bounds the connections of one peer address that are not
	// upgraded (0: no bound): past it, a new connection of that address
	// takes the place of its longest waiting one, or is closed at once. An
	// IPv6 peer counts by its /64, which one host usually holds whole.
	PerAddr int
	// Exempt reports the peers PerAddr does not apply to (proxies that
	// speak for many clients); nil exempts none.
	Exempt func(netip.Addr) bool
	// Refused is called for every connection closed at once, Evicted for
	// every connection closed to make room; either may be nil.
	Refused, Evicted func()
}

// Listener is a net.Listener bounded by Options. Give an http.Server
// serving it ConnState as its ConnState hook: that is how the listener
// learns which connections wait for a request and which were upgraded.
type Listener struct {
	net.Listener
	o Options

	mu      sync.Mutex
	total   int
	waiting list.List // *conn waiting for a request, longest waiting first
	addrs   map[netip.Addr]*addrConns
}

// addrConns are the connections of one address that count toward PerAddr.
type addrConns struct {
	n       int
	waiting list.List // *conn, longest waiting first
}

// New bounds ln by o.
func New(ln net.Listener, o Options) *Listener {
	return &Listener{Listener: ln, o: o, addrs: map[netip.Addr]*addrConns{}}
}

// conn is an accepted connection.
type conn struct {
	net.Conn
	l *Listener

	// Guarded by l.mu.
	key      netip.Addr
	counted  bool          // counts toward PerAddr for key
	inList   *list.Element // in l.waiting
	inAddr   *list.Element // in the address's waiting list
	released bool          // no longer counted anywhere
}

// Accept returns the next connection, closing connections past the bounds
// (or ones waiting for a request, to make room).
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c := l.admit(nc); c != nil {
			return c, nil
		}
	}
}

// admit counts nc in, or closes it and returns nil.
func (l *Listener) admit(nc net.Conn) *conn {
	c := &conn{Conn: nc, l: l}
	var victims []*conn
	l.mu.Lock()
	if ip, ok := peer(nc.RemoteAddr()); ok && l.o.PerAddr > 0 && (l.o.Exempt == nil || !l.o.Exempt(ip)) {
		c.key, c.counted = key(ip), true
		if a := l.addrs[c.key]; a != nil && a.n >= l.o.PerAddr {
			v := front(&a.waiting)
			if v == nil {
				l.mu.Unlock()
				l.refuse(nc)
				return nil
			}
			l.release(v)
			victims = append(victims, v)
		}
	}
	if l.total >= l.o.Max {
		v := front(&l.waiting)
		if v == nil {
			l.mu.Unlock()
			l.refuse(nc)
			return nil
		}
		l.release(v)
		victims = append(victims, v)
	}
	l.total++
	if c.counted {
		a := l.addrs[c.key]
		if a == nil {
			a = &addrConns{}
			l.addrs[c.key] = a
		}
		a.n++
	}
	l.wait(c)
	l.mu.Unlock()
	// Counted before the close, so whoever sees a connection closed sees
	// it counted.
	for _, v := range victims {
		if l.o.Evicted != nil {
			l.o.Evicted()
		}
		_ = v.Conn.Close()
	}
	return c
}

func (l *Listener) refuse(nc net.Conn) {
	if l.o.Refused != nil {
		l.o.Refused()
	}
	_ = nc.Close()
}

// ConnState is the http.Server hook that tells the listener a connection's
// state: waiting for a request (new, idle), serving one (active), upgraded
// (hijacked: it leaves PerAddr, and is never closed to make room), closed.
func (l *Listener) ConnState(nc net.Conn, s http.ConnState) {
	c := unwrap(nc)
	if c == nil || c.l != l {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.released {
		return
	}
	switch s {
	case http.StateNew, http.StateIdle:
		l.stopWaiting(c)
		l.wait(c)
	case http.StateActive:
		l.stopWaiting(c)
	case http.StateHijacked:
		l.stopWaiting(c)
		l.uncount(c)
	case http.StateClosed:
		l.release(c)
	}
}

// Counts returns the connections open and, of those, the ones waiting for
// a request.
func (l *Listener) Counts() (open, waiting int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.waiting.Len()
}

// wait puts c last in the waiting lists.
func (l *Listener) wait(c *conn) {
	c.inList = l.waiting.PushBack(c)
	if c.counted {
		c.inAddr = l.addrs[c.key].waiting.PushBack(c)
	}
}

func (l *Listener) stopWaiting(c *conn) {
	if c.inList != nil {
		l.waiting.Remove(c.inList)
		c.inList = nil
	}
	if c.inAddr != nil {
		l.addrs[c.key].waiting.Remove(c.inAddr)
		c.inAddr = nil
	}
}

// uncount takes c out of its address's count.
func (l *Listener) uncount(c *conn) {
	if !c.counted {
		return
	}
	c.counted = false
	a := l.addrs[c.key]
	if a.n--; a.n == 0 {
		delete(l.addrs, c.key)
	}
}

// release takes c out of every count, once.
func (l *Listener) release(c *conn) {
	if c.released {
		return
	}
	l.stopWaiting(c)
	l.uncount(c)
	c.released = true
	l.total--
}

// Close implements net.Conn.
func (c *conn) Close() error {
	c.l.mu.Lock()
	c.l.release(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// NetConn returns the accepted connection (as tls.Conn does).
func (c *conn) NetConn() net.Conn { return c.Conn }

func front(ls *list.List) *conn {
	if e := ls.Front(); e != nil {
		return e.Value.(*conn)
	}
	return nil
}

// unwrap finds the conn under nc, through tls.Conn and any other wrapper
// with NetConn.
func unwrap(nc net.Conn) *conn {
	for nc != nil {
		if c, ok := nc.(*conn); ok {
			return c
		}
		w, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		nc = w.NetConn()
	}
	return nil
}

// peer is the IP of a remote address.
func peer(a net.Addr) (netip.Addr, bool) {
	if t, ok := a.(*net.TCPAddr); ok {
		ip, ok := netip.AddrFromSlice(t.IP)
		return ip.Unmap(), ok
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// key is what an address counts as: itself, or an IPv6 address's /64.
func key(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return ip
}
