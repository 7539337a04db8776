package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// pingClientsEnv names, in the environment of this test binary run as a
// client process, the WebSocket URL, how many clients to open and every
// how many one is silent: "url n silentEvery".
const pingClientsEnv = "WSBRIDGE_TEST_PING_CLIENTS"

// TestPingsEveryQuietConnection holds 5,000 quiet connections (1,500 under
// the race detector, which slows down with every goroutine alive), far
// more than the gateway could ping in a tick when pings were written 256 at
// a time,
// and checks what the gateway recorded: every connection that answers was
// pinged at least twice, each ping in the first tick at or after its due
// time (none behind), none of them was closed; every silent one (it never
// reads, so never answers) was pinged and closed for want of a pong. The
// clients run in another process: the race detector allows 8,128
// goroutines per process, and each side has one per connection.
func TestPingsEveryQuietConnection(t *testing.T) {
	conns, silentEvery := 5000, 500
	if raceOn {
		conns = 1500
	}
	silent := conns / silentEvery
	s := serveAll(t, func(o *Options) {
		// Room for a pong on a loaded machine: one later than the
		// interval closes an answering connection.
		o.PingInterval = 5 * time.Second
		o.MaxConnections = conns + 16
	})
	cmd := exec.Command(os.Args[0], "-test.run=^TestPingClientProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=ws://%s/ws %d %d", pingClientsEnv, s.ws, conns, silentEvery))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	ready := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		if strings.TrimSpace(line) != "ready" {
			rest, _ := io.ReadAll(r)
			line += string(rest)
		}
		ready <- line
		_, _ = io.Copy(io.Discard, r)
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			t.Fatalf("client process:\n%s", line)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the client process never opened its connections")
	}

	// pinged returns how many open connections were pinged fewer than
	// twice.
	pinged := func() (under int) {
		s.g.mu.Lock()
		defer s.g.mu.Unlock()
		for _, c := range s.g.conns {
			if c.pings.Load() < 2 {
				under++
			}
		}
		return under
	}
	waitForLong(t, "every silent connection to be closed for want of a pong", func() bool {
		st := s.g.Stats()
		return st.ConnectionsTotal == uint64(conns) && st.ConnectionsOpen == int64(conns-silent)
	})
	waitForLong(t, "every connection that answers to be pinged twice", func() bool { return pinged() == 0 })
	st := s.g.Stats()
	if st.ConnectionsOpen != int64(conns-silent) {
		t.Errorf("%d connections open, want %d: one that answers its pings was closed", st.ConnectionsOpen, conns-silent)
	}
	if st.PingsBehind != 0 {
		t.Errorf("%d of %d pings were decided a tick or more after they were due", st.PingsBehind, st.Pings)
	}
	if st.Pings < uint64(2*(conns-silent)+silent) {
		t.Errorf("%d pings written, want at least %d", st.Pings, 2*(conns-silent)+silent)
	}
	if m := metricsText(t, s.ops); !strings.Contains(m, fmt.Sprintf(`wsbridge_gateway_disconnects_total{reason="ping"} %d`, silent)) {
		t.Errorf("want %d disconnects for want of a pong:\n%s", silent, pingMetricLines(m, "disconnects_total"))
	}
}

// waitForLong is waitFor with room for thousands of connections on a
// loaded machine under the race detector.
func waitForLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after 2m waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pingMetricLines(text, sub string) string {
	var out []string
	for l := range strings.Lines(text) {
		if strings.Contains(l, sub) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}

// TestPingClientProcess is the client side of TestPingsEveryQuietConnection
// when that test runs this binary; otherwise it is skipped. Clients read
// (so answer pings) until stdin closes, except every silentEvery-th one,
// which never reads.
func TestPingClientProcess(t *testing.T) {
	spec := os.Getenv(pingClientsEnv)
	if spec == "" {
		t.Skip("only runs as TestPingsEveryQuietConnection's client process")
	}
	f := strings.Fields(spec)
	if len(f) != 3 {
		t.Fatalf("%s=%q: want \"url n silentEvery\"", pingClientsEnv, spec)
	}
	n, err1 := strconv.Atoi(f[1])
	every, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || n <= 0 || every <= 0 {
		t.Fatalf("%s=%q: want \"url n silentEvery\"", pingClientsEnv, spec)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var clients []*websocket.Conn
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				c, _, err := websocket.Dial(ctx, f[0], nil)
				cancel()
				if err != nil {
					t.Errorf("dial %d: %v", i, err)
					next.Store(int64(n))
					return
				}
				mu.Lock()
				clients = append(clients, c)
				mu.Unlock()
				if i%every != every-1 {
					go func() { _, _, _ = c.Read(context.Background()) }() // reading answers pings
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range clients {
		_ = c.CloseNow()
	}
}

// TestPingDoesNotWaitForPong: writing a ping returns once the frame is
// written, before any pong (the client does not read yet), and the pong
// that comes once it reads is recorded.
func TestPingDoesNotWaitForPong(t *testing.T) {
	s := serveAll(t, func(o *Options) { o.PingInterval = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cl, _, err := websocket.Dial(ctx, "ws://"+s.ws+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseNow()
	waitFor(t, "the connection to be accepted", func() bool { return s.g.Stats().ConnectionsOpen == 1 })
	var c *conn
	s.g.mu.Lock()
	for _, x := range s.g.conns {
		c = x
	}
	s.g.mu.Unlock()
	before := c.ponged.Load()
	c.pinged.Store(s.g.since())
	written := make(chan struct{})
	go func() { c.sendPing(); close(written) }()
	select {
	case <-written:
	case <-time.After(waitTimeout):
		t.Fatal("writing a ping waited for its pong")
	}
	if c.ponged.Load() != before || c.closing.Load() {
		t.Fatal("a pong was recorded, or the connection is closing, though the client has read nothing")
	}
	go func() { _, _, _ = cl.Read(context.Background()) }()
	waitFor(t, "the pong to be recorded", func() bool { return c.ponged.Load() >= c.pinged.Load() })
}
