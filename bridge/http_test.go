package bridge

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// TestOpsListenerIdleFlood is the attack of keep-alive sockets on the
// ops listener: 2,000 of them (one GET /healthz each, then idle) were
// never closed (the server had a header timeout only), and with more the
// bridge ran out of file descriptors. The listener now keeps at most
// opsMaxConnectionsPerIP of one address and opsMaxConnections in all,
// closing the ones idle longest, and /healthz answers another address.
func TestOpsListenerIdleFlood(t *testing.T) {
	const sockets = 2000
	e := newEnv(t, nil)
	b := e.start(func(o *Options) { o.HTTPAddr = "127.0.0.1:0" })
	addr := b.HTTPAddr().String()
	for _, tc := range []struct {
		name  string
		addrs int
		keep  int
	}{
		{"one address", 1, opsMaxConnectionsPerIP},
		{"twenty addresses", 20, opsMaxConnections},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var open []net.Conn
			for i := range sockets {
				ip := "127.0.2." + strconv.Itoa(10+i%tc.addrs)
				if tc.addrs == 1 {
					ip = "127.0.3.10"
				}
				c := keepAlive(t, ip, addr)
				if c != nil {
					open = append(open, c)
				}
			}
			client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.250")}}).DialContext}}
			resp, err := client.Get("http://" + addr + "/healthz")
			if err != nil {
				t.Fatalf("/healthz from 127.0.0.250: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("/healthz answered %d", resp.StatusCode)
			}
			client.CloseIdleConnections()
			// The server closes what it does not keep as soon as it
			// accepts the next connection: wait to see the closes.
			deadline := time.Now().Add(10 * time.Second)
			for len(open) > tc.keep {
				open = stillOpen(open)
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d keep-alive sockets still open after 10s, want at most %d", len(open), sockets, tc.keep)
				}
			}
			t.Logf("%d keep-alive sockets from %d addresses: %d kept open", sockets, tc.addrs, len(open))
			for _, c := range open {
				c.Close()
			}
		})
	}
}

// keepAlive opens a socket from ip, asks for /healthz and leaves the
// connection idle; nil when the server closed it at once.
func keepAlive(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("socket from %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return nil
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil
	}
	resp.Body.Close()
	return c
}

// stillOpen returns the sockets of cs the server has not closed (a read
// that waits finds nothing to read).
func stillOpen(cs []net.Conn) []net.Conn {
	var out []net.Conn
	for _, c := range cs {
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			out = append(out, c)
		}
	}
	return out
}
