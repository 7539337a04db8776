// Package edge tests `wsbridge gateway` as a production edge with the real
// binaries: two edge instances, one bridge, NATS, WebSocket clients on both.
package edge

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// waitTimeout bounds every wait for something asynchronous (generous: the
// machine is shared); lostWithin is the contract's bound for lost.
const (
	waitTimeout = 30 * time.Second
	lostWithin  = 30 * time.Second
	pushToken   = "s3cret-push-token"
	origin      = "https://app.example.com"
)

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proc is a running wsbridge process.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *buildtest.SyncBuffer
	urls map[string]string // from the banner: websocket, push, ops
	done chan error
}

func start(t *testing.T, bin, name string, banner bool, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = os.Environ()
	p := &proc{name: name, cmd: cmd, out: &buildtest.SyncBuffer{}, urls: map[string]string{}, done: make(chan error, 1)}
	cmd.Stderr = p.out
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			_, _ = p.out.Write([]byte(sc.Text() + "\n"))
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	if !banner {
		return p
	}
	deadline := time.After(waitTimeout)
	for len(p.urls) < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("%s exited before its banner:\n%s", name, p.out.String())
			}
			f := strings.Fields(l)
			switch {
			case len(f) >= 2 && f[0] == "websocket":
				p.urls["ws"] = f[1]
			case len(f) >= 3 && f[0] == "reverse":
				p.urls["push"] = f[2]
			case len(f) >= 3 && f[0] == "gateway" && f[1] == "ops":
				p.urls["ops"] = strings.TrimSuffix(f[2], "/metrics")
			}
		case <-deadline:
			t.Fatalf("%s printed no banner:\n%s", name, p.out.String())
		}
	}
	return p
}

// exit waits for the process to end and returns its exit code.
func (p *proc) exit(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case err := <-p.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		return 0
	case <-time.After(limit):
		t.Fatalf("%s did not exit within %v", p.name, limit)
	}
	return -1
}

// makeTLS writes a CA and a certificate for 127.0.0.1 signed by it; it
// returns the pool trusting the CA and the certificate and key files.
func makeTLS(t *testing.T) (*x509.CertPool, string, string) {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, leafKey := newKey(), newKey()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(leafKey)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, certFile, keyFile
}

// client is one WebSocket client and every frame it received.
type client struct {
	name  string
	c     *websocket.Conn
	token string

	mu     sync.Mutex
	frames []string
	closed chan websocket.StatusCode // the close status once the connection ends
}

func dial(t *testing.T, name, url string, opts *websocket.DialOptions) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s (%s): %v (HTTP %d)", name, url, err, status)
	}
	c.SetReadLimit(1 << 20)
	cl := &client{name: name, c: c, closed: make(chan websocket.StatusCode, 1)}
	t.Cleanup(func() { _ = c.CloseNow() })
	go func() {
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				cl.closed <- websocket.CloseStatus(err)
				return
			}
			cl.mu.Lock()
			cl.frames = append(cl.frames, string(data))
			cl.mu.Unlock()
		}
	}()
	return cl
}

func (c *client) has(frame string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if f == frame {
			return true
		}
	}
	return false
}

func (c *client) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.frames...)
}

// dialStatus tries an upgrade that must fail and returns its HTTP status.
func dialStatus(t *testing.T, url string, opts *websocket.DialOptions) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err == nil {
		_ = c.CloseNow()
		t.Fatalf("dial %s succeeded, want it refused", url)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v, without an HTTP answer", url, err)
	}
	return resp.StatusCode
}

// events records the inbound events of every connection as NATS delivers
// them.
type events struct {
	mu       sync.Mutex
	connects []string            // tokens, in order
	discs    map[string][]string // token -> reasons
}

func (e *events) disconnects(token string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.discs[token]...)
}

func (e *events) connected(n int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.connects) < n {
		return nil
	}
	return append([]string(nil), e.connects...)
}

// TestEdgeInstances is the edge as SPEC §6 has it: two instances (one
// serving wss:// with a certificate from a CA made here), one bridge that
// knows neither, NATS. Sends reach the right client, also one published the
// instant its connect event is seen; a broadcast reaches all; a push without
// the token gets 401, a foreign Origin 403, the per-IP cap 429; SIGKILL of
// one instance gets each of its connections one lost event within 30s and
// removes their records; SIGTERM of the other closes its clients with 1001,
// announces one shutdown each and exits 0.
func TestEdgeInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	// edge-a runs the real function binaries over SCF's net/rpc, edge-b
	// the same handlers in process.
	dir := buildtest.BuildT(t, ".", "functions/register", "functions/transfer", "functions/cleanup")
	bin := buildtest.Binary(dir, ".")
	fnDir := filepath.Join(t.TempDir(), "functions")
	if err := os.Mkdir(fnDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"register", "transfer", "cleanup"} {
		if err := os.Rename(buildtest.Binary(dir, "functions/"+role), filepath.Join(fnDir, role)); err != nil {
			t.Fatal(err)
		}
	}
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	api, err := subjects.NewClient(nc, subjects.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	names := api.Names()
	natsURL := s.ClientURL()

	// API Gateway, still serving some connections during the move: the
	// bridge's --push-url. Edge instances are found through NATS.
	apigw := make(chan subjects.PushBody, 4)
	apigwSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b subjects.PushBody
		_ = json.NewDecoder(r.Body).Decode(&b)
		apigw <- b
		_, _ = io.WriteString(w, `{"errNo":0,"errMsg":"ok"}`)
	}))
	defer apigwSrv.Close()

	// The bridge first: it provisions the streams and the registry.
	bridge := start(t, bin, "bridge", false, "bridge", "--nats-url", natsURL, "--http-addr", "127.0.0.1:0",
		"--push-url", apigwSrv.URL+"/api-secret",
		"--push-token", pushToken, "--retry-backoff", "50ms", "--retry-backoff-max", "500ms", "--log-level", "debug")
	waitFor(t, "the bridge's partition leases", waitTimeout, func() bool {
		kv, err := js.KeyValue(context.Background(), names.Leases())
		if err != nil {
			return false
		}
		_, err = kv.Get(context.Background(), "p.0")
		return err == nil
	})

	// A backend that greets every connection the instant its connect event
	// arrives: the push must find the instance that holds it.
	ev := &events{discs: map[string][]string{}}
	sub, err := nc.Subscribe(names.Inbound(), func(m *nats.Msg) {
		p, err := names.Parse(m.Subject)
		if err != nil {
			return
		}
		switch p.Kind {
		case subjects.KindConnect:
			ev.mu.Lock()
			ev.connects = append(ev.connects, p.Token)
			ev.mu.Unlock()
			if _, err := js.Publish(context.Background(), names.Send(p.Token), []byte("welcome "+p.Token)); err != nil {
				t.Errorf("publish welcome: %v", err)
			}
		case subjects.KindDisconnect:
			var d subjects.DisconnectEvent
			_ = json.Unmarshal(m.Data, &d)
			ev.mu.Lock()
			ev.discs[p.Token] = append(ev.discs[p.Token], d.Reason)
			ev.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	pool, certFile, keyFile := makeTLS(t)
	common := []string{"gateway", "--nats-url", natsURL, "--addr", "127.0.0.1:0", "--push-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0", "--push-token", pushToken, "--allowed-origins", origin,
		"--instance-ttl", "3s", "--shutdown-timeout", "20s", "--log-level", "debug"}
	edgeA := start(t, bin, "edge-a", true, append(common, "--instance-id", "edge-a", "--max-connections-per-ip", "3", "--functions", fnDir)...)
	edgeB := start(t, bin, "edge-b", true, append(common, "--instance-id", "edge-b", "--tls-cert", certFile, "--tls-key", keyFile)...)
	if !strings.HasPrefix(edgeB.urls["ws"], "wss://") {
		t.Fatalf("edge-b websocket URL %q, want wss://", edgeB.urls["ws"])
	}
	wssOpts := func() *websocket.DialOptions {
		return &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	}
	originOpts := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}}

	clients := []*client{
		dial(t, "a1", edgeA.urls["ws"], originOpts),
		dial(t, "a2", edgeA.urls["ws"], nil),
		dial(t, "b1", edgeB.urls["ws"], wssOpts()),
		dial(t, "b2", edgeB.urls["ws"], wssOpts()),
	}
	// Each client's greeting names its token, so the greeting tells which
	// token is whose, and that the send published at once arrived.
	var tokens []string
	waitFor(t, "four connect events", waitTimeout, func() bool { tokens = ev.connected(4); return tokens != nil })
	for _, c := range clients {
		waitFor(t, c.name+"'s welcome", waitTimeout, func() bool {
			for _, f := range c.all() {
				if tok, ok := strings.CutPrefix(f, "welcome "); ok {
					c.token = tok
					return true
				}
			}
			return false
		})
		id, err := subjects.ConnID(c.token)
		if err != nil {
			t.Fatal(err)
		}
		if inst, _ := subjects.EdgeInstance(id); inst != "edge-"+c.name[:1] {
			t.Errorf("%s's connection id %q names instance %q, want edge-%s", c.name, id, inst, c.name[:1])
		}
		if got := c.all(); len(got) != 1 {
			t.Errorf("%s received %q, want only its own welcome", c.name, got)
		}
	}

	// A send to each reaches that client alone.
	for _, c := range clients {
		if _, err := js.Publish(context.Background(), names.Send(c.token), []byte("for "+c.name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clients {
		waitFor(t, c.name+"'s send", waitTimeout, func() bool { return c.has("for " + c.name) })
	}
	// A broadcast reaches all, once the bridge lists all four.
	waitFor(t, "the bridge to list four connections", waitTimeout, func() bool {
		rep, err := api.ConnList(context.Background(), subjects.ConnListRequest{})
		return err == nil && rep.Total == 4
	})
	if _, err := js.Publish(context.Background(), names.Broadcast(), []byte("to everyone")); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		waitFor(t, c.name+"'s broadcast", waitTimeout, func() bool { return c.has("to everyone") })
	}
	for _, c := range clients {
		if got := c.all(); len(got) != 3 {
			t.Errorf("%s received %q, want its welcome, its send and the broadcast", c.name, got)
		}
	}

	// A connection of API Gateway's goes to the --push-url.
	const apigwID = "L5bZ4yiH7c2a+/=="
	if _, err := js.Publish(context.Background(), names.Send(subjects.Token(apigwID)), []byte("via API Gateway")); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-apigw:
		if b.WebSocket.SecConnectionID != apigwID || b.WebSocket.Data != "via API Gateway" {
			t.Errorf("API Gateway got %+v", b.WebSocket)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the send to an API Gateway connection did not reach the --push-url")
	}

	// A push without the token: 401, and nothing reaches the client.
	body := `{"websocket":{"action":"data send","secConnectionID":"x","dataType":"text","data":"no"}}`
	for _, auth := range []string{"", "Bearer wrong"} {
		req, _ := http.NewRequest(http.MethodPost, edgeA.urls["push"], strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(answer), `"errNo":401`) {
			t.Errorf("push with Authorization %q answered %d %s, want 401 with errNo 401", auth, resp.StatusCode, answer)
		}
	}
	// A foreign Origin: 403, before any function runs.
	if got := dialStatus(t, edgeA.urls["ws"], &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}}); got != http.StatusForbidden {
		t.Errorf("upgrade with a foreign Origin answered %d, want 403", got)
	}
	// The per-IP cap of edge-a is 3: a third client fits, a fourth is refused.
	a3 := dial(t, "a3", edgeA.urls["ws"], nil)
	if got := dialStatus(t, edgeA.urls["ws"], nil); got != http.StatusTooManyRequests {
		t.Errorf("upgrade past the per-IP cap answered %d, want 429", got)
	}
	waitFor(t, "a3's connect event", waitTimeout, func() bool { return ev.connected(5) != nil })
	a3tok := ev.connected(5)[4]
	waitFor(t, "a3's welcome", waitTimeout, func() bool { return a3.has("welcome " + a3tok) })
	_ = a3.c.Close(websocket.StatusNormalClosure, "bye")
	waitFor(t, "a3's client disconnect", waitTimeout, func() bool { return len(ev.disconnects(a3tok)) == 1 })

	// Ops endpoints of a live instance.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(edgeA.urls["ops"] + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("edge-a %s answered %d", path, resp.StatusCode)
		}
	}
	metrics := get(t, edgeA.urls["ops"]+"/metrics")
	for _, want := range []string{
		"wsbridge_gateway_connections 2",
		`wsbridge_gateway_connects_total{result="accepted"} 3`,
		`wsbridge_gateway_connects_total{result="refused"} 2`,
		`wsbridge_gateway_pushes_total{result="unauthorized"} 2`,
		`wsbridge_gateway_pushes_total{result="ok"} 7`, // a1, a2: welcome, send, broadcast; a3: welcome
		`wsbridge_gateway_frames_total{direction="out"} 7`,
		`wsbridge_gateway_invocation_duration_seconds_count{function="register"} 3`,
		"wsbridge_gateway_nats_connected 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("edge-a /metrics lacks %q", want)
		}
	}

	// SIGKILL edge-a: its connections are announced lost, once, within 30s,
	// and their records go.
	a1, a2, b1, b2 := clients[0], clients[1], clients[2], clients[3]
	fnProcs := children(edgeA.cmd.Process.Pid)
	if len(fnProcs) != 3 {
		t.Errorf("edge-a runs %d function processes, want 3", len(fnProcs))
	}
	if err := edgeA.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// Its function processes die with it: none is left holding a port.
	waitFor(t, "edge-a's function processes to die with it", waitTimeout, func() bool {
		for _, pid := range fnProcs {
			if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
				return false
			}
		}
		return true
	})
	for _, c := range []*client{a1, a2} {
		waitFor(t, c.name+"'s lost event", lostWithin, func() bool { return len(ev.disconnects(c.token)) > 0 })
	}
	t.Logf("lost announced %v after the kill", time.Since(killed).Round(time.Millisecond))
	reg, err := js.KeyValue(context.Background(), names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{a1, a2} {
		if got := ev.disconnects(c.token); len(got) != 1 || got[0] != subjects.ReasonLost {
			t.Errorf("%s's disconnect events %q, want one lost", c.name, got)
		}
		if _, err := reg.Get(context.Background(), c.token); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("%s's registry record: %v, want it deleted", c.name, err)
		}
	}
	// A send to a lost connection is dead-lettered as gone.
	dlq, err := nc.SubscribeSync(names.DeadLetter(subjects.KindSend, a1.token))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), names.Send(a1.token), []byte("too late")); err != nil {
		t.Fatal(err)
	}
	m, err := dlq.NextMsg(waitTimeout)
	if err != nil {
		t.Fatalf("no dead letter for a send to a lost connection: %v", err)
	}
	if r := m.Header.Get("Ws-Reason"); r != "gone" {
		t.Errorf("dead letter reason %q, want gone", r)
	}

	// SIGTERM edge-b: 1001 to its clients, one shutdown event each, exit 0.
	if err := edgeB.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client{b1, b2} {
		select {
		case code := <-c.closed:
			if code != websocket.StatusGoingAway {
				t.Errorf("%s closed with %d, want 1001", c.name, code)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("%s not closed after SIGTERM", c.name)
		}
	}
	if code := edgeB.exit(t, waitTimeout); code != 0 {
		t.Errorf("edge-b exited %d after SIGTERM, want 0", code)
	}
	for _, c := range []*client{b1, b2} {
		waitFor(t, c.name+"'s shutdown event", waitTimeout, func() bool { return len(ev.disconnects(c.token)) > 0 })
		if _, err := reg.Get(context.Background(), c.token); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("%s's registry record: %v, want it deleted", c.name, err)
		}
	}

	// The stream holds one disconnect event per connection, with the true
	// reason (repeats of an announcement share a message id).
	want := map[string]string{a1.token: "lost", a2.token: "lost", b1.token: "shutdown", b2.token: "shutdown", a3tok: "client"}
	got := storedDisconnects(t, js, names)
	for tok, reason := range want {
		if r := got[tok]; len(r) != 1 || r[0] != reason {
			t.Errorf("stored disconnect events of %s: %q, want [%s]", tok, r, reason)
		}
	}
	if err := bridge.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := bridge.exit(t, waitTimeout); code != 0 {
		t.Errorf("bridge exited %d after SIGTERM", code)
	}
}

// children lists the processes whose parent is pid (Linux /proc).
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces, so cut at the last ')'.
		i := strings.LastIndex(string(stat), ") ")
		if i < 0 {
			continue
		}
		if f := strings.Fields(string(stat)[i+2:]); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// storedDisconnects reads every disconnect event stored in WS_IN.
func storedDisconnects(t *testing.T, js jetstream.JetStream, names subjects.Names) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, names.StreamIn(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{names.InboundKind(subjects.KindDisconnect)}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	n := int(info.NumPending)
	for n > 0 {
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			var d subjects.DisconnectEvent
			_ = json.Unmarshal(m.Data(), &d)
			out[d.Token] = append(out[d.Token], d.Reason)
			n--
		}
		if batch.Error() != nil {
			t.Fatal(batch.Error())
		}
	}
	return out
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
