package edge

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/subjects/wsclient"
	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/natstest"
	"github.com/wsbridge/wsbridge/test/netcut"
	"github.com/wsbridge/wsbridge/test/node"
)

// sessionStack builds wsbridge, starts NATS and a bridge (retrying pushes
// after 50 ms, so a push the old holder of a moved session refused is soon
// at the new one), and returns what the session tests use.
func sessionStack(t *testing.T) (bin, natsURL string, nc *nats.Conn, js jetstream.JetStream, names subjects.Names) {
	t.Helper()
	dir := buildtest.BuildT(t, ".")
	bin = buildtest.Binary(dir, ".")
	s := natstest.Start(t)
	nc = natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	names = subjects.MustNew(subjects.DefaultPrefix)
	natsURL = s.ClientURL()
	start(t, bin, "bridge", false, "bridge", "--nats-url", natsURL, "--http-addr", "127.0.0.1:0",
		"--push-url", "http://127.0.0.1:1/no-api-gateway", "--push-token", pushToken,
		"--retry-backoff", "50ms", "--retry-backoff-max", "500ms", "--log-level", "debug")
	waitFor(t, "the bridge's partition leases", waitTimeout, func() bool {
		kv, err := js.KeyValue(context.Background(), names.Leases())
		if err != nil {
			return false
		}
		_, err = kv.Get(context.Background(), "p.0")
		return err == nil
	})
	return bin, natsURL, nc, js, names
}

// hostOf is the host:port of an instance's client listener.
func hostOf(p *proc) string {
	return strings.TrimPrefix(strings.TrimSuffix(p.urls["ws"], "/ws"), "ws://")
}

// sessionClient is one resumable client and what it read.
type sessionClient struct {
	c     *wsclient.Client
	token string

	mu   sync.Mutex
	got  []int // the numbers of the pushes read, in order
	bad  []string
	done chan struct{}
}

func (sc *sessionClient) read() {
	defer close(sc.done)
	for {
		m, err := sc.c.Read(context.Background())
		if err != nil {
			return
		}
		n, err := strconv.Atoi(string(m.Data))
		sc.mu.Lock()
		if err != nil {
			sc.bad = append(sc.bad, string(m.Data))
		} else {
			sc.got = append(sc.got, n)
		}
		sc.mu.Unlock()
	}
}

func (sc *sessionClient) count() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return len(sc.got)
}

// TestRollingRestartKeepsSessions: 200 resumable clients behind a balancer
// in front of two edge instances, pushes flowing to every one of them and
// messages from every one of them, while the network drops every socket
// once and then each instance is restarted in turn (SIGTERM, a new process
// under the same id). Every push arrives exactly once and in order, every
// client message is passed on exactly once, and the backend sees no
// disconnect and no second connect: the restarts are invisible.
func TestRollingRestartKeepsSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	const clients = 200
	bin, natsURL, nc, js, names := sessionStack(t)

	var connects, disconnects atomic.Int64
	var inMu sync.Mutex
	inbound := map[string]int{} // "token n" -> times passed on
	sub, err := nc.Subscribe(names.Inbound(), func(m *nats.Msg) {
		p, err := names.Parse(m.Subject)
		if err != nil {
			return
		}
		switch p.Kind {
		case subjects.KindConnect:
			connects.Add(1)
		case subjects.KindDisconnect:
			disconnects.Add(1)
			t.Logf("disconnect event %s: %s", p.Token, m.Data)
		case subjects.KindMessage:
			inMu.Lock()
			inbound[p.Token+" "+string(m.Data)]++
			inMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	edgeArgs := func(id string) []string {
		return []string{"gateway", "--nats-url", natsURL, "--addr", "127.0.0.1:0", "--push-addr", "127.0.0.1:0",
			"--http-addr", "127.0.0.1:0", "--push-token", pushToken, "--instance-id", id,
			"--instance-ttl", "3s", "--shutdown-timeout", "20s", "--resume-window", "30s", "--log-level", "debug"}
	}
	edges := map[string]*proc{}
	for _, id := range []string{"edge-a", "edge-b"} {
		edges[id] = start(t, bin, id, true, edgeArgs(id)...)
	}
	lb := netcut.New(t)
	lb.Set(hostOf(edges["edge-a"]), hostOf(edges["edge-b"]))

	var resumed, resets atomic.Int64
	scs := make([]*sessionClient, clients)
	ctx := context.Background()
	for i := range scs {
		c, err := wsclient.Dial(ctx, "ws://"+lb.Addr()+"/ws", wsclient.Options{
			MaxBackoff: time.Second,
			OnEvent: func(ev wsclient.Event) {
				switch ev.Kind {
				case wsclient.Resumed:
					resumed.Add(1)
				case wsclient.Reset:
					resets.Add(1)
					t.Errorf("client %d reset: %v", i, ev.Err)
				}
			},
		})
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		scs[i] = &sessionClient{c: c, token: c.Token(), done: make(chan struct{})}
		go scs[i].read()
	}
	waitFor(t, "200 connect events", waitTimeout, func() bool { return connects.Load() == clients })

	// The backend pushes 1, 2, 3… to every client, and every client sends
	// 1, 2, 3… back, until told to stop.
	var pushed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			for _, sc := range scs {
				if _, err := js.PublishAsync(names.Send(sc.token), []byte(strconv.Itoa(n))); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
			}
			<-js.PublishAsyncComplete()
			pushed.Store(int64(n))
			time.Sleep(50 * time.Millisecond)
		}
	}()
	var sent atomic.Int64
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			for _, sc := range scs {
				if err := sc.c.Send(ctx, websocket.MessageText, []byte(strconv.Itoa(n))); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
			sent.Store(int64(n))
			time.Sleep(100 * time.Millisecond)
		}
	}()
	readAll := func(what string, want int64) {
		t.Helper()
		waitFor(t, what, 2*waitTimeout, func() bool {
			for _, sc := range scs {
				if int64(sc.count()) < want {
					return false
				}
			}
			return true
		})
	}
	// Every client has read what was pushed so far, and then some.
	progress := func(what string) { t.Helper(); readAll(what, pushed.Load()+3) }
	progress("every client reading")

	// The network drops every socket at once.
	t.Logf("cut %d connections", lb.Cut())
	progress("every client reading after the cut")

	// A rolling restart: each instance in turn is stopped (SIGTERM) and
	// started again under its id; the balancer sends new connections to
	// the instances running.
	for _, id := range []string{"edge-a", "edge-b"} {
		other := "edge-b"
		if id == "edge-b" {
			other = "edge-a"
		}
		lb.Set(hostOf(edges[other]))
		began := time.Now()
		if err := edges[id].cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := edges[id].exit(t, 2*waitTimeout); code != 0 {
			t.Fatalf("%s exited %d after SIGTERM", id, code)
		}
		t.Logf("%s drained and exited in %v", id, time.Since(began).Round(time.Millisecond))
		edges[id] = start(t, bin, id, true, edgeArgs(id)...)
		lb.Set(hostOf(edges["edge-a"]), hostOf(edges["edge-b"]))
		progress("every client reading after " + id + " restarted")
	}
	close(stop)
	wg.Wait()
	last := pushed.Load()
	readAll("every push read", last)
	lastSent := sent.Load()
	waitFor(t, "every client message passed on", 2*waitTimeout, func() bool {
		inMu.Lock()
		defer inMu.Unlock()
		return len(inbound) >= clients*int(lastSent)
	})

	for i, sc := range scs {
		sc.mu.Lock()
		got, bad := sc.got, sc.bad
		sc.mu.Unlock()
		if len(bad) > 0 {
			t.Errorf("client %d read %q", i, bad)
		}
		if len(got) != int(last) {
			t.Errorf("client %d read %d pushes, want %d", i, len(got), last)
		}
		for j, n := range got {
			if n != j+1 {
				t.Errorf("client %d: push %d is %d: lost, repeated or out of order (%v…)", i, j+1, n, got[max(0, j-3):min(len(got), j+3)])
				break
			}
		}
	}
	inMu.Lock()
	for k, n := range inbound {
		if n != 1 {
			t.Errorf("client message %q passed on %d times", k, n)
		}
	}
	inMu.Unlock()
	if n := disconnects.Load(); n != 0 {
		t.Errorf("%d disconnect events, want none", n)
	}
	if n := connects.Load(); n != clients {
		t.Errorf("%d connect events, want %d", n, clients)
	}
	dlq, err := js.Stream(ctx, names.StreamDLQ())
	if err == nil {
		if info, err := dlq.Info(ctx); err == nil && info.State.Msgs != 0 {
			t.Errorf("%d dead letters, want none", info.State.Msgs)
		}
	}
	t.Logf("%d clients: %d pushes each, %d messages each; %d resumes, %d resets", clients, last, lastSent, resumed.Load(), resets.Load())
	_ = sub.Unsubscribe() // the closes below end the sessions, as they should
	for _, sc := range scs {
		_ = sc.c.Close()
	}
}

// TestKilledInstanceLosesSessions: an instance that dies (SIGKILL) takes its
// sessions with it. Its clients, back through the balancer at the other
// instance, are told to try again while the dead one still has a record,
// then that their sessions are lost: each starts a new session (a new
// connect event), and each old connection gets one disconnect event, lost.
func TestKilledInstanceLosesSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	const clients = 20
	bin, natsURL, nc, js, names := sessionStack(t)
	var mu sync.Mutex
	connected := map[string]bool{}
	lost := map[string]int{}
	sub, err := nc.Subscribe(names.Inbound(), func(m *nats.Msg) {
		p, err := names.Parse(m.Subject)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch p.Kind {
		case subjects.KindConnect:
			connected[p.Token] = true
		case subjects.KindDisconnect:
			if strings.Contains(string(m.Data), `"reason":"lost"`) {
				lost[p.Token]++
			} else {
				t.Errorf("disconnect event %s: %s", p.Token, m.Data)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	edgeArgs := func(id string) []string {
		return []string{"gateway", "--nats-url", natsURL, "--addr", "127.0.0.1:0", "--push-addr", "127.0.0.1:0",
			"--http-addr", "127.0.0.1:0", "--push-token", pushToken, "--instance-id", id, "--instance-ttl", "2s", "--log-level", "debug"}
	}
	a := start(t, bin, "edge-a", true, edgeArgs("edge-a")...)
	b := start(t, bin, "edge-b", true, edgeArgs("edge-b")...)
	lb := netcut.New(t)
	lb.Set(hostOf(a))

	var resets sync.Map // client -> reason
	scs := make([]*wsclient.Client, clients)
	old := map[string]bool{}
	for i := range scs {
		c, err := wsclient.Dial(context.Background(), "ws://"+lb.Addr()+"/ws", wsclient.Options{
			MaxBackoff: 500 * time.Millisecond,
			OnEvent: func(ev wsclient.Event) {
				if ev.Kind == wsclient.Reset {
					resets.Store(i, ev.Reason)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		scs[i] = c
		old[c.Token()] = true
	}
	lb.Set(hostOf(b))
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every client reset", lostWithin, func() bool {
		n := 0
		resets.Range(func(_, _ any) bool { n++; return true })
		return n == clients
	})
	resets.Range(func(k, v any) bool {
		if v != "lost" {
			t.Errorf("client %v reset with reason %q, want lost", k, v)
		}
		return true
	})
	waitFor(t, "every old connection announced lost", lostWithin, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lost) == clients
	})
	// The new sessions work: a push to each new token arrives.
	for i, c := range scs {
		if old[c.Token()] {
			t.Fatalf("client %d kept its old token after the reset", i)
		}
		if _, err := js.Publish(context.Background(), names.Send(c.Token()), []byte("after")); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		m, err := c.Read(ctx)
		cancel()
		if err != nil || string(m.Data) != "after" {
			t.Fatalf("client %d after its reset: %q %v", i, m.Data, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for tok, n := range lost {
		if n != 1 || !old[tok] {
			t.Errorf("token %s: %d lost events (an old connection: %v)", tok, n, old[tok])
		}
	}
	if len(connected) != 2*clients {
		t.Errorf("%d connect events, want %d (each client's first and its new session)", len(connected), 2*clients)
	}
}

// TestNodeClientResumes: wsbridge.js in Node (over the npm ws package) holds
// a session through a balancer in front of two instances while the network
// is cut under it four times; it resumes wherever the balancer sends it (so
// at the other instance too), reads every push once and in order, its
// messages are passed on once each, and the backend sees one connect and no
// disconnect until the client closes.
func TestNodeClientResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	nodeBin := node.Setup(t)
	bin, natsURL, nc, js, names := sessionStack(t)
	var mu sync.Mutex
	var connects, disconnects, inbound []string
	sub, err := nc.Subscribe(names.Inbound(), func(m *nats.Msg) {
		p, err := names.Parse(m.Subject)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch p.Kind {
		case subjects.KindConnect:
			connects = append(connects, p.Token)
		case subjects.KindDisconnect:
			disconnects = append(disconnects, string(m.Data))
		case subjects.KindMessage:
			inbound = append(inbound, string(m.Data))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	var edges []*proc
	for _, id := range []string{"edge-a", "edge-b"} {
		edges = append(edges, start(t, bin, id, true, "gateway", "--nats-url", natsURL, "--addr", "127.0.0.1:0",
			"--push-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--push-token", pushToken,
			"--instance-id", id, "--instance-ttl", "3s"))
	}
	lb := netcut.New(t, hostOf(edges[0]), hostOf(edges[1]))

	const sends = 40
	cmd := exec.Command(nodeBin, filepath.Join(node.Dir(), "live_client.js"), "ws://"+lb.Addr()+"/ws", strconv.Itoa(sends))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr buildtest.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("node stderr:\n%s", stderr.String())
		}
	})
	type line struct {
		Event, Token, Data, Reason string
		Code                       int
	}
	lines := make(chan line, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Errorf("node printed %q: %v", sc.Text(), err)
				continue
			}
			lines <- l
		}
		close(lines)
	}()
	var token string
	var got []string
	resumed := 0
	next := func(what string) line {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("node exited waiting for %s", what)
			}
			switch l.Event {
			case "message":
				got = append(got, l.Data)
			case "resumed":
				resumed++
				if l.Token != token {
					t.Errorf("resumed with token %s, want %s", l.Token, token)
				}
			case "reset", "close":
				if what != "the close" {
					t.Fatalf("node: %+v while waiting for %s", l, what)
				}
			}
			return l
		case <-time.After(waitTimeout):
			t.Fatalf("no line from node within %v waiting for %s", waitTimeout, what)
		}
		return line{}
	}
	token = next("the open").Token
	if token == "" {
		t.Fatal("no token in the open event")
	}
	const rounds, per = 4, 25
	ctx := context.Background()
	for r := range rounds {
		for i := range per {
			if _, err := js.Publish(ctx, names.Send(token), []byte(fmt.Sprintf("p%03d", r*per+i))); err != nil {
				t.Fatal(err)
			}
		}
		for len(got) < (r+1)*per {
			next(fmt.Sprintf("push %d", (r+1)*per))
		}
		t.Logf("round %d: cut %d connections", r, lb.Cut())
		for resumed < r+1 {
			next(fmt.Sprintf("resume %d", r+1))
		}
	}
	for i := range got {
		if want := fmt.Sprintf("p%03d", i); got[i] != want {
			t.Fatalf("push %d read as %q (%v): lost, repeated or out of order", i, got[i], got[max(0, i-2):min(len(got), i+3)])
		}
	}
	waitFor(t, "every message of the client passed on", waitTimeout, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(inbound) >= sends
	})
	mu.Lock()
	var want []string
	for i := 1; i <= sends; i++ {
		want = append(want, "c"+strconv.Itoa(i))
	}
	if !slices.Equal(inbound, want) {
		t.Errorf("the backend got %v, want c1..c%d once each, in order", inbound, sends)
	}
	if len(connects) != 1 || len(disconnects) != 0 {
		t.Errorf("connect events %v, disconnect events %v: want one connect, no disconnect", connects, disconnects)
	}
	mu.Unlock()
	remote := 0
	for _, e := range edges {
		for l := range strings.SplitSeq(get(t, e.urls["ops"]+"/metrics"), "\n") {
			if v, ok := strings.CutPrefix(l, `wsbridge_gateway_session_resumes_total{from="remote"} `); ok {
				n, _ := strconv.Atoi(v)
				remote += n
			}
		}
	}
	if remote == 0 {
		t.Errorf("no resume was at the other instance (the balancer alternates): the test did not cover a move")
	}
	if _, err := io.WriteString(stdin, "close\n"); err != nil {
		t.Fatal(err)
	}
	if l := next("the close"); l.Event != "close" || l.Code != 1000 {
		t.Errorf("after close: %+v, want close 1000", l)
	}
	waitFor(t, "the disconnect event of the close", waitTimeout, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(disconnects) == 1
	})
	t.Logf("%d pushes read once each across %d cuts (%d resumes at the other instance), %d messages passed on once each", len(got), rounds, remote, sends)
}
