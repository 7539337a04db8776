package main

import (
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// tcpProxy forwards a bridge's NATS connections to one node; the runner
// cuts it to make the bridge a zombie (it still reaches the edges).
//
// A cut either blackholes (connections stay open and nothing passes either
// way, so the client notices only by its own timeouts, as behind a dead
// switch) or resets (connections are closed and new ones closed at once).
// Healing closes every connection that lived through the cut, so the
// client reconnects afresh.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  string // "", "blackhole", "reset"
	gate  chan struct{}
	conns map[net.Conn]struct{}
}

func newTCPProxy(target string) (*tcpProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &tcpProxy{ln: ln, target: target, gate: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.gate) // open
	go p.serve()
	return p, nil
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		if mode != "reset" {
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if mode == "reset" {
			c.Close()
			continue
		}
		go p.handle(c)
	}
}

func (p *tcpProxy) handle(c net.Conn) {
	defer p.forget(c)
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	defer p.forget(up)
	done := make(chan struct{}, 2)
	go func() { p.pipe(up, c); done <- struct{}{} }()
	go func() { p.pipe(c, up); done <- struct{}{} }()
	<-done
}

func (p *tcpProxy) forget(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// pipe copies src to dst, holding every chunk at the gate while the proxy
// blackholes; what is held when the cut heals is dropped with the
// connection.
func (p *tcpProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			<-gate
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// cut starts a cut in mode "blackhole" or "reset".
func (p *tcpProxy) cut(mode string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	p.gate = make(chan struct{})
	if mode == "reset" {
		for c := range p.conns {
			c.Close()
		}
	}
}

// heal ends a cut: connections that lived through it are closed.
func (p *tcpProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == "" {
		return
	}
	p.mode = ""
	for c := range p.conns {
		c.Close()
	}
	close(p.gate)
}

func (p *tcpProxy) close() {
	p.heal()
	p.ln.Close()
}

// pushProxy stands between the bridges and one edge's push address: the
// edge advertises it as its --push-url. A fault makes it answer 503 to a
// share of the pushes without forwarding them, or delay every push.
type pushProxy struct {
	srv    *http.Server
	ln     net.Listener
	rp     *httputil.ReverseProxy
	frac   atomic.Uint64 // share refused with 503, in millionths
	delay  atomic.Int64  // added to every push, ns
	served atomic.Int64
	failed atomic.Int64
}

func newPushProxy(target string) (*pushProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &pushProxy{ln: ln}
	p.rp = httputil.NewSingleHostReverseProxy(u)
	p.rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	p.rp.ErrorLog = nil
	p.rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		// The edge is down: what the bridge would see without the proxy
		// is a refused connection, a transient failure like this 502.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, `{"errNo":502,"errMsg":"edge unreachable"}`)
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *pushProxy) url() string { return "http://" + p.ln.Addr().String() + "/push" }

func (p *pushProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.served.Add(1)
	if d := time.Duration(p.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	if f := p.frac.Load(); f > 0 && rand.Uint64N(1_000_000) < f {
		p.failed.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"errNo":503,"errMsg":"push proxy refusing (chaos)"}`)
		return
	}
	p.rp.ServeHTTP(w, r)
}

func (p *pushProxy) set503(frac float64) { p.frac.Store(uint64(frac * 1_000_000)) }
func (p *pushProxy) setDelay(d time.Duration) {
	p.delay.Store(int64(d))
}

func (p *pushProxy) close() { _ = p.srv.Close() }
