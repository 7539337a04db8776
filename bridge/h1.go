package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// h1 is the bridge's own HTTP/1.1 client for pushes. A push is one small
// POST answered by a few dozen bytes; net/http's client hands every request
// to two goroutines of the connection (a writer and a reader) and back,
// which cost more CPU than the bridge's own work (the bench measured a
// keep-alive net/http client at 0.6 of this one's rate against the same
// server). Here the pushing goroutine writes the request and reads the
// answer on a pooled keep-alive connection itself; net/http still parses
// the answer (http.ReadResponse: status, headers, chunked bodies, close).
//
// It is used for http:// and https:// push URLs without a proxy; a URL the
// environment sends through a proxy goes through net/http (see pusher).
type h1 struct {
	timeout  time.Duration // one push, dial to answer
	maxIdle  int           // idle connections kept per host
	dialer   net.Dialer
	idleFor  time.Duration // an idle connection older than this is closed
	tlsConf  *tls.Config   // nil: the system's roots
	mu       sync.Mutex
	hosts    map[string]*h1Host // by scheme and host
	lastTidy time.Time
}

type h1Host struct {
	scheme, addr, serverName string
	proxied                  bool // the environment names a proxy for it: net/http pushes
	idle                     []*h1Conn
}

type h1Conn struct {
	c     net.Conn
	cr    countingReader
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time // idle since
}

// countingReader counts what an answer read, to tell a keep-alive
// connection the server had already closed (nothing read) from a
// failure while answering.
type countingReader struct {
	r net.Conn
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func newH1(maxIdle int, timeout time.Duration) *h1 {
	return &h1{
		timeout: timeout,
		maxIdle: maxIdle,
		dialer:  net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second},
		idleFor: 90 * time.Second,
		hosts:   make(map[string]*h1Host),
	}
}

// host returns u's pool, or nil when u must go through net/http (a proxy,
// or a scheme other than http and https).
func (h *h1) host(u *url.URL) *h1Host {
	key := u.Scheme + "://" + u.Host
	h.mu.Lock()
	defer h.mu.Unlock()
	if hp, ok := h.hosts[key]; ok {
		if hp.proxied {
			return nil
		}
		return hp
	}
	hp := &h1Host{scheme: u.Scheme, serverName: u.Hostname()}
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
	default:
		return nil
	}
	hp.addr = net.JoinHostPort(u.Hostname(), port)
	if p, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err != nil || p != nil {
		hp.proxied = true
	}
	h.hosts[key] = hp
	if hp.proxied {
		return nil
	}
	return hp
}

// get takes an idle connection of hp, or nil.
func (h *h1) get(hp *h1Host) *h1Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	for n := len(hp.idle); n > 0; n = len(hp.idle) {
		pc := hp.idle[n-1]
		hp.idle = hp.idle[:n-1]
		if now.Sub(pc.since) < h.idleFor {
			return pc
		}
		pc.c.Close()
	}
	return nil
}

// put keeps pc for the next push to hp, and now and then closes the
// connections every host has left idle too long.
func (h *h1) put(hp *h1Host, pc *h1Conn) {
	now := time.Now()
	pc.since = now
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(hp.idle) < h.maxIdle {
		hp.idle = append(hp.idle, pc)
	} else {
		pc.c.Close()
	}
	if now.Sub(h.lastTidy) < h.idleFor/3 {
		return
	}
	h.lastTidy = now
	for key, other := range h.hosts {
		kept := other.idle[:0]
		for _, c := range other.idle {
			if now.Sub(c.since) < h.idleFor {
				kept = append(kept, c)
			} else {
				c.c.Close()
			}
		}
		clear(other.idle[len(kept):])
		other.idle = kept
		if len(kept) == 0 && other != hp {
			delete(h.hosts, key) // instances come and go; their pools with them
		}
	}
}

// dropIdle closes hp's idle connections.
func (h *h1) dropIdle(hp *h1Host) {
	h.mu.Lock()
	idle := hp.idle
	hp.idle = nil
	h.mu.Unlock()
	for _, pc := range idle {
		pc.c.Close()
	}
}

func (h *h1) dial(ctx context.Context, hp *h1Host, deadline time.Time) (*h1Conn, error) {
	d := h.dialer
	d.Deadline = deadline
	c, err := d.DialContext(ctx, "tcp", hp.addr)
	if err != nil {
		return nil, err
	}
	if hp.scheme == "https" {
		conf := &tls.Config{ServerName: hp.serverName, NextProtos: []string{"http/1.1"}}
		if h.tlsConf != nil {
			conf = h.tlsConf.Clone()
			conf.ServerName, conf.NextProtos = hp.serverName, []string{"http/1.1"}
		}
		tc := tls.Client(c, conf)
		_ = c.SetDeadline(deadline)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c = tc
	}
	pc := &h1Conn{c: c, cr: countingReader{r: c}}
	pc.br = bufio.NewReaderSize(&pc.cr, 1024)
	pc.bw = bufio.NewWriterSize(c, 1024)
	return pc, nil
}

// h1Request is what a push writes besides its body.
type h1Request struct {
	u           *url.URL
	contentType string
	auth        string // Authorization value, or ""
	seq         uint64 // Ws-Seq when not 0
}

// errStaleConn marks a kept connection the server had closed before it
// read anything of the answer.
var errStaleConn = errors.New("kept connection closed by the server")

// do posts body (head then tail) and reads at most maxAnswer of the answer
// into buf. It returns the status and the answer; err is a transport error
// (never quoting the URL, whose path may be secret).
func (h *h1) do(ctx context.Context, hp *h1Host, r *h1Request, head, tail []byte, buf []byte) (int, []byte, error) {
	deadline := time.Now().Add(h.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for attempt := 0; ; attempt++ {
		pc, reused := h.get(hp), true
		if pc == nil {
			var err error
			if pc, err = h.dial(ctx, hp, deadline); err != nil {
				return 0, nil, h.explain(ctx, err)
			}
			reused = false
		}
		status, data, keep, err := h.roundTrip(ctx, deadline, pc, r, head, tail, buf)
		if err == nil {
			if keep {
				h.put(hp, pc)
			} else {
				pc.c.Close()
			}
			return status, data, nil
		}
		pc.c.Close()
		if errors.Is(err, errStaleConn) && reused && attempt < 2 && ctx.Err() == nil && time.Now().Before(deadline) {
			// Closed while idle, as servers do after a while or when they
			// restart: the others kept as long are likely closed too.
			h.dropIdle(hp)
			continue
		}
		return 0, nil, h.explain(ctx, err)
	}
}

// explain names a timeout or a cancelled push as such.
func (h *h1) explain(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("push: %w (%v)", ctx.Err(), err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("push timeout: %w", err)
	}
	return fmt.Errorf("push: %w", err)
}

func (h *h1) roundTrip(ctx context.Context, deadline time.Time, pc *h1Conn, r *h1Request, head, tail []byte, buf []byte) (status int, data []byte, keep bool, err error) {
	if err := pc.c.SetDeadline(deadline); err != nil {
		return 0, nil, false, err
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	w := pc.bw
	w.WriteString("POST ")
	w.WriteString(r.u.RequestURI())
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(r.u.Host)
	w.WriteString("\r\nUser-Agent: wsbridge\r\nContent-Type: ")
	w.WriteString(r.contentType)
	if r.auth != "" {
		w.WriteString("\r\nAuthorization: ")
		w.WriteString(r.auth)
	}
	if r.seq != 0 {
		w.WriteString("\r\nWs-Seq: ")
		w.Write(strconv.AppendUint(buf[:0], r.seq, 10))
	}
	w.WriteString("\r\nContent-Length: ")
	w.Write(strconv.AppendInt(buf[:0], int64(len(head)+len(tail)), 10))
	w.WriteString("\r\n\r\n")
	w.Write(head)
	w.Write(tail)
	if err := w.Flush(); err != nil {
		return 0, nil, false, err
	}
	pc.cr.n = 0
	resp, err := http.ReadResponse(pc.br, nil)
	for err == nil && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(pc.br, nil) // 1xx: the answer follows
	}
	if err != nil {
		if pc.cr.n == 0 && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || isReset(err)) {
			return 0, nil, false, fmt.Errorf("%w: %v", errStaleConn, err)
		}
		return 0, nil, false, fmt.Errorf("read answer: %w", err)
	}
	data, err = readAnswer(resp.Body, buf)
	// Reusable only when the answer was read to its end.
	keep = err == nil && !resp.Close && len(data) < maxAnswer
	if keep {
		var one [1]byte
		if n, rerr := resp.Body.Read(one[:]); n != 0 || rerr != io.EOF {
			keep = false
		}
	}
	resp.Body.Close()
	if err != nil && resp.StatusCode == http.StatusOK {
		return 0, nil, false, fmt.Errorf("read answer: %w", err)
	}
	return resp.StatusCode, data, keep, nil
}

func isReset(err error) bool {
	var se interface{ Timeout() bool }
	if errors.As(err, &se) && se.Timeout() {
		return false
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read"
}
