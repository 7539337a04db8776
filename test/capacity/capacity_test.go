// Package capacity tests `wsbridge gateway` as a process at the edges of
// its capacity: a process out of file descriptors, many connections
// dropped at once, and all of them coming back at once.
package capacity

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
)

// waitTimeout bounds every wait for something asynchronous (generous: the
// machine is shared).
const waitTimeout = 60 * time.Second

// binary returns the wsbridge binary the tests run: built here, or the one
// WSBRIDGE_CAPACITY_BIN names (to measure another build the same way).
func binary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("WSBRIDGE_CAPACITY_BIN"); bin != "" {
		t.Logf("running %s", bin)
		return bin
	}
	return buildtest.Binary(buildtest.BuildT(t, "."), ".")
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// raiseFileLimit makes room for the test's own clients: their sockets are
// this process's.
func raiseFileLimit(t *testing.T, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= need {
		return
	}
	want := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		t.Skipf("the test needs %d file descriptors for its clients and has %d (hard %d): %v", need, lim.Cur, lim.Max, err)
	}
}

// proc is a running gateway (or other wsbridge) process.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *buildtest.SyncBuffer
	urls map[string]string // from the banner: ws, push, ops
	done chan error
}

// start runs bin with args; with banner it waits for the gateway's banner
// and reads its addresses. rlimit, when set, is the child's RLIMIT_NOFILE
// (soft and hard), set through prlimit(1).
func start(t *testing.T, bin, name string, rlimit int, banner bool, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if rlimit > 0 {
		pl, err := exec.LookPath("prlimit")
		if err != nil {
			t.Skipf("prlimit (util-linux) is needed to start the gateway with a low file limit: %v", err)
		}
		cmd = exec.Command(pl, append([]string{fmt.Sprintf("--nofile=%d:%d", rlimit, rlimit), bin}, args...)...)
	}
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
		if t.Failed() || os.Getenv("WSBRIDGE_CAPACITY_LOGS") != "" {
			out := p.out.String()
			if len(out) > 20000 {
				out = "…" + out[len(out)-20000:]
			}
			t.Logf("%s output:\n%s", name, out)
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

// metric returns the sum of a metric's samples whose labels contain every
// one of labels (`what="disconnect"`), from the instance's /metrics.
func (p *proc) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(p.urls["ops"] + "/metrics")
	if err != nil {
		t.Fatalf("%s /metrics: %v", p.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum := 0.0
lines:
	for _, l := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		for _, want := range labels {
			if !strings.Contains(l, want) {
				continue lines
			}
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// sources are the loopback addresses clients dial from, so that tens of
// thousands of connections to one port do not run out of ephemeral ports.
var sources = func() []*http.Client {
	var cs []*http.Client
	for i := 2; i <= 250; i++ {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i))}, Timeout: waitTimeout}
		cs = append(cs, &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: -1}})
	}
	return cs
}()

// dialResult is one upgrade's outcome.
type dialResult struct {
	c      *websocket.Conn
	status int // the HTTP status of a refused upgrade, 0 without one
	err    error
	took   time.Duration
}

// dialOne upgrades once from source i, bounded by limit.
func dialOne(url string, i int, limit time.Duration) dialResult {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	began := time.Now()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: sources[i%len(sources)]})
	r := dialResult{c: c, err: err, took: time.Since(began)}
	if resp != nil && err != nil {
		r.status = resp.StatusCode
	}
	if c != nil {
		// Reads control frames (pings, close) until the connection ends.
		c.CloseRead(context.Background())
	}
	return r
}

// dialMany opens n connections to url, at most par at a time; a refused
// upgrade (503, 429, a reset) is tried again after a jittered backoff, as
// a client of a restarted balancer would, until it is upgraded or limit
// has passed. It returns the connections, and how many refusals there were.
func dialMany(url string, first, n, par int, limit time.Duration) ([]*websocket.Conn, int64, error) {
	conns := make([]*websocket.Conn, n)
	var refused atomic.Int64
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	deadline := time.Now().Add(limit)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			backoff := 100 * time.Millisecond
			for {
				r := dialOne(url, first+i, time.Until(deadline))
				if r.err == nil {
					conns[i] = r.c
					return
				}
				refused.Add(1)
				if time.Now().Add(backoff).After(deadline) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("client %d: %w (HTTP %d)", first+i, r.err, r.status))
					mu.Unlock()
					return
				}
				time.Sleep(backoff/2 + rand.N(backoff/2+1))
				backoff = min(2*backoff, 2*time.Second)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, refused.Load(), fmt.Errorf("%d of %d clients never connected within %v; first: %w", len(errs), n, limit, errors.Join(errs[:min(len(errs), 3)]...))
	}
	return conns, refused.Load(), nil
}

// Clients run in processes of their own (this test binary again, run by
// TestMain as a client process), each holding its share of the
// connections: one process could not hold tens of thousands of sockets
// under an ordinary file limit. A client process dials its connections at
// start and says "up <refusals>", and then obeys its standard input:
// "drop" closes every connection at once ("dropped"), "up" dials them all
// again ("up <refusals>"); end of input ends it.
const (
	envClientURL   = "WSBRIDGE_CAPACITY_CLIENT_URL"
	envClientFirst = "WSBRIDGE_CAPACITY_CLIENT_FIRST"
	envClientN     = "WSBRIDGE_CAPACITY_CLIENT_N"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(envClientURL); url != "" {
		os.Exit(clientMain(url))
	}
	os.Exit(m.Run())
}

func clientMain(url string) int {
	first, _ := strconv.Atoi(os.Getenv(envClientFirst))
	n, _ := strconv.Atoi(os.Getenv(envClientN))
	var conns []*websocket.Conn
	up := func() bool {
		cs, refused, err := dialMany(url, first, n, 128, 5*time.Minute)
		if err != nil {
			fmt.Println("error", err)
			return false
		}
		conns = cs
		fmt.Println("up", refused)
		return true
	}
	if !up() {
		return 1
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "drop":
			var wg sync.WaitGroup
			for part := range slices.Chunk(conns, 500) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, c := range part {
						_ = c.CloseNow()
					}
				}()
			}
			wg.Wait()
			conns = nil
			fmt.Println("dropped")
		case "up":
			if !up() {
				return 1
			}
		}
	}
	return 0
}

// clients is a running client process.
type clients struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	out   *buildtest.SyncBuffer
}

// startClients runs a client process holding n connections to url
// (numbered from first, which picks their source addresses).
func startClients(t *testing.T, url string, first, n int) *clients {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envClientURL+"="+url, fmt.Sprintf("%s=%d", envClientFirst, first), fmt.Sprintf("%s=%d", envClientN, n))
	c := &clients{cmd: cmd, lines: make(chan string, 16), out: &buildtest.SyncBuffer{}}
	cmd.Stderr = c.out
	var err error
	if c.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		_ = c.in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

// expect waits for the client process's next line, which must start with
// word, and returns the rest.
func (c *clients) expect(t *testing.T, word string, limit time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("client process ended, waiting for %q:\n%s", word, c.out.String())
		}
		rest, found := strings.CutPrefix(l, word)
		if !found {
			t.Fatalf("client process said %q, want %q:\n%s", l, word, c.out.String())
		}
		return strings.TrimSpace(rest)
	case <-time.After(limit):
		t.Fatalf("client process did not say %q within %v", word, limit)
	}
	return ""
}

// say sends a command to the client process.
func (c *clients) say(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		t.Fatalf("client process: %v", err)
	}
}

// inbound is what WS_IN holds: connect and disconnect events per token.
type inbound struct {
	connects map[string]int
	discs    map[string][]string // token -> reasons
}

// readInbound reads WS_IN whole.
func readInbound(t *testing.T, js jetstream.JetStream, names subjects.Names) inbound {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	in := inbound{connects: map[string]int{}, discs: map[string][]string{}}
	st, err := js.Stream(ctx, names.StreamIn())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return in
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("read %s: %v", names.StreamIn(), err)
		}
		last := false
		for m := range batch.Messages() {
			p, err := names.Parse(m.Subject())
			if err == nil {
				switch p.Kind {
				case subjects.KindConnect:
					in.connects[p.Token]++
				case subjects.KindDisconnect:
					var d subjects.DisconnectEvent
					_ = json.Unmarshal(m.Data(), &d)
					in.discs[p.Token] = append(in.discs[p.Token], d.Reason)
				}
			}
			md, err := m.Metadata()
			if err == nil && md.Sequence.Stream >= info.State.LastSeq {
				last = true
			}
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("read %s: %v", names.StreamIn(), err)
		}
		if last {
			return in
		}
	}
}

// waitRecords waits until the registry holds want records.
func waitRecords(t *testing.T, kv jetstream.KeyValue, want int, when string, limit time.Duration) {
	t.Helper()
	n := -1
	deadline := time.Now().Add(limit)
	for {
		if n = registryCount(t, kv); n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %d registry records %s: %d", limit, want, when, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// registryCount counts the registry's records.
func registryCount(t *testing.T, kv jetstream.KeyValue) int {
	t.Helper()
	return len(registryKeys(t, kv))
}

// registryKeys lists the registry's records: the tokens of the
// connections registered.
func registryKeys(t *testing.T, kv jetstream.KeyValue) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil
		}
		t.Fatalf("list registry: %v", err)
	}
	set := map[string]bool{}
	for k := range keys.Keys() {
		set[k] = true
	}
	return set
}

// balanced checks the events of the connections in WS_IN that are not in
// accepted: upgrades refused because their register invocation failed
// (timed out) after it may have stored the connect event. Each such token
// has as many disconnect events as connect events, at most one of each;
// no token has a disconnect event without its connect event.
func balanced(t *testing.T, in inbound, accepted ...map[string]bool) int {
	t.Helper()
	n := 0
	for token, c := range in.connects {
		if slices.ContainsFunc(accepted, func(m map[string]bool) bool { return m[token] }) {
			continue
		}
		n++
		if d := in.discs[token]; c != 1 || len(d) != 1 {
			t.Errorf("refused connection %s: %d connect events, disconnect events %q; want one of each", token, c, d)
		}
	}
	for token, d := range in.discs {
		if in.connects[token] == 0 {
			t.Errorf("connection %s: disconnect events %q without a connect event", token, d)
		}
	}
	return n
}
