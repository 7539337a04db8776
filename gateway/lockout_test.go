package gateway

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their files and a pool trusting the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// dialerFrom dials from the local address ip: on Linux every 127.x.y.z
// address is the loopback's, so one machine plays many client addresses.
func dialerFrom(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: waitTimeout}
}

// hold opens n sockets from ip to addr, each sending send first and, when
// it is a request, reading its answer (then the socket is an idle
// keep-alive connection). The sockets stay open until the test ends.
func hold(t *testing.T, ip, addr string, n int, send string) {
	t.Helper()
	d := dialerFrom(ip)
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("socket from %s: %v", ip, err)
		}
		t.Cleanup(func() { c.Close() })
		if send == "" {
			continue
		}
		if _, err := io.WriteString(c, send); err != nil {
			continue // closed by the server already
		}
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			resp.Body.Close()
		}
		_ = c.SetReadDeadline(time.Time{})
	}
}

// metric returns the value of a metric line in /metrics, 0 when absent.
func metric(t *testing.T, ops, name string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\d+)`).FindStringSubmatch(metricsText(t, ops))
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestOneAddressCannotLockOutClients is the attack of one address opening
// more sockets to the client listener than it allows, and leaving them
// idle: with no TLS hello, with no request, or after one request (an idle
// keep-alive connection). Such sockets counted only toward the listener's
// total, so a client from another address was closed at once until they
// timed out (10s per wave, 60s with keep-alive). An address now holds at
// most its share of the connections that are not WebSockets; a client from
// another address is served.
func TestOneAddressCannotLockOutClients(t *testing.T) {
	const (
		maxConns = 400
		maxHTTP  = 100
		sockets  = maxConns + maxHTTP + 100 // past the listener's total
	)
	for _, tc := range []struct {
		name string
		tls  bool
		send string
	}{
		{"no TLS hello", true, ""},
		{"no request", false, ""},
		{"one GET then idle", false, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pool *x509.CertPool
			s := serveAll(t, func(o *Options) {
				o.MaxConnections, o.MaxHTTPConnections = maxConns, maxHTTP
				if tc.tls {
					o.TLSCert, o.TLSKey, pool = selfSigned(t)
				}
			})
			hold(t, "127.0.0.60", s.ws, sockets, tc.send)
			scheme := "ws://"
			transport := &http.Transport{DialContext: dialerFrom("127.0.0.250").DialContext}
			if tc.tls {
				scheme = "wss://"
				transport.TLSClientConfig = &tls.Config{RootCAs: pool}
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			c, _, err := websocket.Dial(ctx, scheme+s.ws+"/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: transport}})
			refused := metric(t, s.ops, "wsbridge_gateway_listener_refused_total")
			evicted := metric(t, s.ops, "wsbridge_gateway_listener_evicted_total")
			t.Logf("%d sockets from 127.0.0.60: %d closed at once, %d closed to make room", sockets, refused, evicted)
			if err != nil {
				t.Fatalf("a client from 127.0.0.250 was locked out: %v", err)
			}
			c.CloseNow()
			// Every socket of the attacker was accepted before the
			// client's: what it holds is what was not closed.
			if kept, share := sockets-refused-evicted, maxHTTP/4; kept > share {
				t.Errorf("127.0.0.60 holds %d sockets, want at most its share %d", kept, share)
			}
		})
	}
}

// TestHandshakeTimeout: on the client listener, a connection that sends no
// request, or idles after one, is closed after HandshakeTimeout, however
// long ReadTimeout and KeepAliveTimeout are.
func TestHandshakeTimeout(t *testing.T) {
	s := serveAll(t, func(o *Options) {
		o.HandshakeTimeout = 200 * time.Millisecond
		o.ReadTimeout, o.KeepAliveTimeout = time.Hour, time.Hour
	})
	silent := dialTCP(t, s.ws)
	idle := dialTCP(t, s.ws)
	if _, err := io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	slow := dialTCP(t, s.ws)
	if _, err := io.WriteString(slow, "GET /ws HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]net.Conn{"silent": silent, "idle keep-alive": idle, "slow headers": slow} {
		if !closedByServer(c) {
			t.Errorf("%s connection still open after %v", name, waitTimeout)
		}
	}
}

// TestOpsAndPushAnswerUnderIdleFlood is the attack of idle sockets on the
// push and ops listeners: 1,024 of them filled each listener, and /healthz
// was unreachable until they timed out (10 s per wave). With more idle
// sockets than the cap, from one address or from many, /healthz and /push
// still answer a client from another address.
func TestOpsAndPushAnswerUnderIdleFlood(t *testing.T) {
	const sockets = DefaultMaxHTTPConnections + 100
	for _, tc := range []struct {
		name  string
		addrs int
		send  string
	}{
		{"one address, no request", 1, ""},
		{"one address, one GET then idle", 1, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"eleven addresses, no request", 11, ""},
		{"eleven addresses, one GET then idle", 11, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := serveAll(t, nil)
			for _, addr := range []string{s.ops, s.push} {
				for i := range tc.addrs {
					hold(t, "127.0.1."+strconv.Itoa(10+i), addr, sockets/tc.addrs, tc.send)
				}
			}
			client := &http.Client{Transport: &http.Transport{DialContext: dialerFrom("127.0.0.250").DialContext}}
			for _, c := range []struct {
				url  string
				want int
			}{{"http://" + s.ops + "/healthz", http.StatusOK}, {"http://" + s.push + "/push", http.StatusMethodNotAllowed}} {
				resp, err := client.Get(c.url)
				if err != nil {
					t.Fatalf("GET %s from 127.0.0.250: %v", c.url, err)
				}
				resp.Body.Close()
				if resp.StatusCode != c.want {
					t.Errorf("GET %s answered %d, want %d", c.url, resp.StatusCode, c.want)
				}
			}
			refused := metric(t, s.ops, "wsbridge_gateway_listener_refused_total")
			evicted := metric(t, s.ops, "wsbridge_gateway_listener_evicted_total")
			t.Logf("%d idle sockets on each of ops and push from %d addresses: %d closed at once, %d closed to make room", sockets, tc.addrs, refused, evicted)
		})
	}
}
