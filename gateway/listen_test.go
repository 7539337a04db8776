package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
)

// served is a gateway serving real listeners: clients on ws, pushes on
// push, ops on ops.
type served struct {
	g             *Gateway
	fn            *fakeFn
	stop          func() // stops serving (also when the test ends)
	ws, push, ops string // host:port
}

func serveAll(t *testing.T, tweak func(*Options)) *served {
	t.Helper()
	fn := &fakeFn{}
	o := Options{Register: fn, Transfer: fn, Cleanup: fn, Addr: "127.0.0.1:0", PushAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}
	if tweak != nil {
		tweak(&o)
	}
	g, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := Listen(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.ServeAll(ctx, ls) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("ServeAll: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &served{g: g, fn: fn, stop: stop, ws: ls.WS.Addr().String(), push: ls.Push.Addr().String(), ops: ls.HTTP.Addr().String()}
}

// closedByServer reports whether the server closes c (it may answer first)
// within waitTimeout.
func closedByServer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSlowAndIdleHTTPConnectionsAreClosed is the attack of issue 7 item 8:
// many connections that send a body slowly, or nothing at all, or stay idle
// after a request, on every listener; each is closed by the server.
func TestSlowAndIdleHTTPConnectionsAreClosed(t *testing.T) {
	s := serveAll(t, func(o *Options) {
		o.ReadTimeout = 200 * time.Millisecond
		o.KeepAliveTimeout = 200 * time.Millisecond
	})
	type attack struct {
		name string
		addr string
		send string
	}
	var attacks []attack
	for _, l := range []struct{ name, addr string }{{"ws", s.ws}, {"push", s.push}, {"ops", s.ops}} {
		attacks = append(attacks,
			attack{l.name + " silent", l.addr, ""},
			attack{l.name + " slow headers", l.addr, "POST /push HTTP/1.1\r\nHost: x\r\n"},
			attack{l.name + " slow body", l.addr, "POST /push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"},
			attack{l.name + " idle keep-alive", l.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"},
		)
	}
	const each = 84 // about 1,000 connections in all, as in issue 7 item 8
	conns := make([][]net.Conn, len(attacks))
	for i, a := range attacks {
		for range each {
			c := dialTCP(t, a.addr)
			if _, err := io.WriteString(c, a.send); err != nil {
				t.Fatal(err)
			}
			conns[i] = append(conns[i], c)
		}
	}
	for i, a := range attacks {
		for _, c := range conns[i] {
			if !closedByServer(c) {
				t.Fatalf("%s: connection still open after %v", a.name, waitTimeout)
			}
		}
	}
}

// TestListenerConnectionCap: at the cap, a new connection takes the place
// of the one waiting longest for a request; when every one is busy with a
// request it is closed at once; both are counted.
func TestListenerConnectionCap(t *testing.T) {
	s := serveAll(t, func(o *Options) { o.MaxHTTPConnections, o.MaxHTTPConnectionsPerIP = 3, 3 })
	silent := []net.Conn{dialTCP(t, s.push), dialTCP(t, s.push), dialTCP(t, s.push)}
	// Past the cap: the first silent one makes room. Asked to close, the
	// server gives its place back once it has answered.
	c := dialTCP(t, s.push)
	if _, err := io.WriteString(c, "GET /push HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("connection past the cap: %v; want it served", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /push answered %d, want 405", resp.StatusCode)
	}
	if !closedByServer(silent[0]) {
		t.Fatal("past the cap, the connection waiting longest is still open")
	}
	if !closedByServer(c) {
		t.Fatal("a connection asked to close is still open")
	}
	// Three pushes whose bodies never come take the free place and the
	// two silent ones' (a 100 Continue says the handler reads the body):
	// every place is busy, and the next connection is closed at once.
	for i := range 3 {
		c := dialTCP(t, s.push)
		if _, err := io.WriteString(c, "POST /push HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(line, "100 Continue") {
			t.Fatalf("busy push %d: %q, %v; want 100 Continue", i+1, line, err)
		}
	}
	late := dialTCP(t, s.push)
	_, _ = io.WriteString(late, "GET /push HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = late.SetReadDeadline(time.Now().Add(waitTimeout))
	if resp, err := http.ReadResponse(bufio.NewReader(late), nil); err == nil {
		resp.Body.Close()
		t.Fatalf("a connection past a cap of busy ones was answered %d; want it closed", resp.StatusCode)
	}
	m := metricsText(t, s.ops)
	for _, want := range []string{"wsbridge_gateway_listener_refused_total 1", "wsbridge_gateway_listener_evicted_total 3"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestMaxHeaderBytes: headers at the limit are read, past it (net/http
// allows 4 KiB of slack) they get 431.
func TestMaxHeaderBytes(t *testing.T) {
	const limit = 2048
	s := serveAll(t, func(o *Options) { o.MaxHeaderBytes = limit })
	get := func(pad int) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.ops+"/healthz", nil)
		req.Header.Set("X-Pad", strings.Repeat("a", pad))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get(limit - 200); got != http.StatusOK {
		t.Errorf("headers within the limit: %d, want 200", got)
	}
	if got := get(limit + 4096 + 100); got != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("headers past the limit: %d, want 431", got)
	}
}

// TestListenNamesTheFlag: an address in use fails at once, naming the
// address and its flag, and leaves nothing bound.
func TestListenNamesTheFlag(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		flag string
		set  func(*Options)
	}{
		{"--addr", func(o *Options) { o.Addr = busy.Addr().String() }},
		{"--push-addr", func(o *Options) { o.PushAddr = busy.Addr().String() }},
		{"--http-addr", func(o *Options) { o.HTTPAddr = busy.Addr().String() }},
	} {
		o := Options{Addr: "127.0.0.1:0", PushAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}
		tc.set(&o)
		ls, err := Listen(context.Background(), o)
		if err == nil {
			ls.Close()
			t.Fatalf("%s in use: Listen succeeded", tc.flag)
		}
		if !strings.Contains(err.Error(), tc.flag+" "+busy.Addr().String()+": address already in use") {
			t.Errorf("%s in use: error %q does not name the flag and address", tc.flag, err)
		}
	}
}

// TestClientIPAndPerIPCap: X-Forwarded-For names the client only behind a
// trusted proxy, and the per-IP cap counts what it names.
func TestClientIPAndPerIPCap(t *testing.T) {
	xff := func(ip string) *websocket.DialOptions {
		return &websocket.DialOptions{HTTPHeader: http.Header{"X-Forwarded-For": {"203.0.113.9, " + ip}}}
	}
	t.Run("trusted proxy", func(t *testing.T) {
		e := newEnv(t, nil, func(o *Options) {
			o.MaxConnectionsPerIP = 1
			o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		})
		e.dial(t, xff("198.51.100.1"))
		e.dial(t, xff("198.51.100.2")) // another client behind the proxy
		if got := dialFail(t, e.wsURL(), xff("198.51.100.1")); got != http.StatusTooManyRequests {
			t.Errorf("second connection of 198.51.100.1: %d, want 429", got)
		}
		var ips []string
		for _, c := range e.fn.of(subjects.ActionConnecting) {
			var ev struct {
				RC struct {
					SourceIP string `json:"sourceIp"`
				} `json:"requestContext"`
			}
			_ = json.Unmarshal([]byte(c.payload), &ev)
			ips = append(ips, ev.RC.SourceIP)
		}
		if fmt.Sprint(ips) != "[198.51.100.1 198.51.100.2]" {
			t.Errorf("sourceIp of the connecting events %v, want the forwarded clients", ips)
		}
	})
	t.Run("untrusted peer", func(t *testing.T) {
		e := newEnv(t, nil, func(o *Options) { o.MaxConnectionsPerIP = 1 })
		e.dial(t, xff("198.51.100.1"))
		// The header is the client's own claim: the socket's address counts.
		if got := dialFail(t, e.wsURL(), xff("198.51.100.2")); got != http.StatusTooManyRequests {
			t.Errorf("second connection from 127.0.0.1: %d, want 429", got)
		}
	})
}

func dialFail(t *testing.T, url string, opts *websocket.DialOptions) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err == nil {
		c.CloseNow()
		t.Fatal("upgrade accepted, want it refused")
	}
	if resp == nil {
		t.Fatalf("upgrade failed without an answer: %v", err)
	}
	return resp.StatusCode
}

// TestPingClosesSilentClients: a client that answers pings stays, one that
// never reads (so never answers) is closed and counted.
func TestPingClosesSilentClients(t *testing.T) {
	s := serveAll(t, func(o *Options) { o.PingInterval = 500 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	alive, _, err := websocket.Dial(ctx, "ws://"+s.ws+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer alive.CloseNow()
	go func() { _, _, _ = alive.Read(context.Background()) }() // reading answers pings
	silent, _, err := websocket.Dial(ctx, "ws://"+s.ws+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.CloseNow()
	waitFor(t, "both accepted", func() bool { return s.g.Stats().ConnectionsTotal == 2 })
	waitFor(t, "the silent client to be closed", func() bool { return s.g.Stats().ConnectionsOpen == 1 })
	// Counted once the connection's end is done with (its cleanup has
	// returned), which can be just after it left the open count.
	waitFor(t, "the ping timeout counted", func() bool {
		return strings.Contains(metricsText(t, s.ops), `wsbridge_gateway_disconnects_total{reason="ping"} 1`)
	})
}

func metricsText(t *testing.T, ops string) string {
	t.Helper()
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
