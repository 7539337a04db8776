package connlimit

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// waitTimeout bounds every wait; a test that hits it fails saying what
// never happened.
const waitTimeout = 10 * time.Second

type server struct {
	ln               *Listener
	addr             string
	refused, evicted atomic.Int64
	release          chan struct{} // closing it ends the requests to /block
}

// serve runs an http.Server on a Listener with o: /block holds its request
// until release is closed, /hijack takes the connection and holds it, any
// other path answers at once.
func serve(t *testing.T, o Options) *server {
	t.Helper()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: tcp.Addr().String(), release: make(chan struct{})}
	o.Refused = func() { s.refused.Add(1) }
	o.Evicted = func() { s.evicted.Add(1) }
	s.ln = New(tcp, o)
	mux := http.NewServeMux()
	mux.HandleFunc("/block", func(w http.ResponseWriter, r *http.Request) { <-s.release })
	mux.HandleFunc("/hijack", func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n\r\n")
		_ = brw.Flush()
		go func() { <-s.release; c.Close() }()
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := &http.Server{Handler: mux, ConnState: s.ln.ConnState}
	go func() { _ = srv.Serve(s.ln) }()
	t.Cleanup(func() {
		close(s.release)
		_ = srv.Close()
	})
	return s
}

func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: waitTimeout}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	return c
}

// get sends a request for path on c and returns the status line's code,
// or an error when the connection was closed without an answer.
func get(c net.Conn, path string) (int, error) {
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// closedByServer reports whether the server closed c without a byte.
func closedByServer(t *testing.T, c net.Conn) bool {
	t.Helper()
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", waitTimeout)
	}
	return n == 0 && err != nil
}

// counts waits until the listener counts open connections, waiting of
// them for a request.
func counts(t *testing.T, l *Listener, open, waiting int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		o, w := l.Counts()
		if o == open && w == waiting {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %d open, %d waiting (have %d, %d)", waitTimeout, open, waiting, o, w)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// block sends a request that holds its connection busy.
func block(c net.Conn) { go func() { _, _ = get(c, "/block") }() }

// TestWaitingConnectionsMakeRoom: at the cap, a new connection takes the
// place of the one waiting longest for a request (silent since accepted,
// or idle after a request); with every connection busy, it is closed at
// once.
func TestWaitingConnectionsMakeRoom(t *testing.T) {
	s := serve(t, Options{Max: 3})
	silent := dialFrom(t, "127.0.0.71", s.addr)
	idle := dialFrom(t, "127.0.0.72", s.addr)
	if code, err := get(idle, "/"); err != nil || code != http.StatusOK {
		t.Fatalf("first request: %d, %v", code, err)
	}
	block(dialFrom(t, "127.0.0.73", s.addr))
	counts(t, s.ln, 3, 2)
	for i, victim := range []net.Conn{silent, idle} {
		c := dialFrom(t, "127.0.0.74", s.addr)
		if code, err := get(c, "/"); err != nil || code != http.StatusOK {
			t.Fatalf("connection %d at the cap: %d, %v; want it served", i+1, code, err)
		}
		if !closedByServer(t, victim) {
			t.Fatalf("connection %d at the cap: the one waiting longest is still open", i+1)
		}
	}
	// Two more take the places of the two just served, and stay busy.
	counts(t, s.ln, 3, 2)
	block(dialFrom(t, "127.0.0.75", s.addr))
	counts(t, s.ln, 3, 1)
	block(dialFrom(t, "127.0.0.75", s.addr))
	counts(t, s.ln, 3, 0)
	if !closedByServer(t, dialFrom(t, "127.0.0.76", s.addr)) {
		t.Fatal("a connection past a cap of busy ones was served")
	}
	if r, e := s.refused.Load(), s.evicted.Load(); r != 1 || e != 4 {
		t.Errorf("refused %d, evicted %d; want 1 and 4", r, e)
	}
}

// TestPerAddr: one address holds at most PerAddr connections that are not
// upgraded; past it, its own longest waiting one makes room, or with none
// waiting the new one is closed at once. Other addresses are not affected,
// and an exempt address is not counted.
func TestPerAddr(t *testing.T) {
	exempt := netip.MustParseAddr("127.0.0.99")
	s := serve(t, Options{Max: 100, PerAddr: 2, Exempt: func(a netip.Addr) bool { return a == exempt }})
	silent := dialFrom(t, "127.0.0.81", s.addr)
	block(dialFrom(t, "127.0.0.81", s.addr))
	counts(t, s.ln, 2, 1)
	block(dialFrom(t, "127.0.0.81", s.addr))
	if !closedByServer(t, silent) {
		t.Fatal("the address's silent connection was not closed to make room")
	}
	counts(t, s.ln, 2, 0)
	if !closedByServer(t, dialFrom(t, "127.0.0.81", s.addr)) {
		t.Fatal("a third connection of one address with two busy ones was served")
	}
	if code, err := get(dialFrom(t, "127.0.0.82", s.addr), "/"); err != nil || code != http.StatusOK {
		t.Errorf("another address: %d, %v; want it served", code, err)
	}
	for range 4 {
		block(dialFrom(t, exempt.String(), s.addr))
	}
	counts(t, s.ln, 7, 1)
	if r, e := s.refused.Load(), s.evicted.Load(); r != 1 || e != 1 {
		t.Errorf("refused %d, evicted %d; want 1 and 1", r, e)
	}
}

// TestUpgradedLeavesPerAddr: an upgraded connection no longer counts
// toward its address's share; it still counts toward Max, and is never
// closed to make room.
func TestUpgradedLeavesPerAddr(t *testing.T) {
	s := serve(t, Options{Max: 3, PerAddr: 1})
	for i := range 3 {
		c := dialFrom(t, "127.0.0.91", s.addr)
		if code, err := get(c, "/hijack"); err != nil || code != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade %d: %d, %v", i+1, code, err)
		}
	}
	counts(t, s.ln, 3, 0)
	if !closedByServer(t, dialFrom(t, "127.0.0.92", s.addr)) {
		t.Fatal("a connection past Max upgraded ones was served")
	}
}

func TestKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::"},
	} {
		if got := key(netip.MustParseAddr(tc.in)).String(); got != tc.want {
			t.Errorf("key(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
