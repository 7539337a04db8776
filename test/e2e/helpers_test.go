package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/stack"
)

// waitTimeout bounds every wait for something asynchronous. It is a limit
// on a hang, not a speed claim: a test that hits it fails saying what never
// happened. Generous, because the suite runs under the race detector on
// machines busy with other work: 2,000 publishes with a 15 s bound timed
// out there while nothing was wrong.
const waitTimeout = 60 * time.Second

// functionNames are the deployed SCF binaries, built once by TestMain.
var functionNames = []string{"register", "transfer", "cleanup", "websocket"}

// binDir holds the function binaries built by TestMain.
var binDir string

// loadClientEnv, when set, makes this test binary the client process of
// BenchmarkDevLoad (see TestDevLoadClientProcess); nothing is built then.
const loadClientEnv = "WSBRIDGE_DEV_LOAD_CLIENT_URL"

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	if os.Getenv(loadClientEnv) != "" {
		return m.Run()
	}
	// The function binaries log to this process's stderr; keep it to what
	// matters unless asked otherwise.
	if os.Getenv(subjects.EnvPrefix+"LOG_LEVEL") == "" {
		os.Setenv(subjects.EnvPrefix+"LOG_LEVEL", "warn")
	}
	dir, err := os.MkdirTemp("", "wsbridge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := buildFunctions(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// buildFunctions builds the deployed function binaries (no race detector:
// what is tested is what is deployed) into dir.
func buildFunctions(dir string) error {
	pkgs := make([]string, len(functionNames))
	for i, name := range functionNames {
		pkgs[i] = "functions/" + name
	}
	return buildtest.Build(dir, pkgs...)
}

// testLogger discards unless WSBRIDGE_E2E_LOG is set, when it writes to
// stderr (not t.Log: the stack logs after a test returns while closing).
func testLogger() *slog.Logger {
	if os.Getenv("WSBRIDGE_E2E_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// devOptions are the stack options of these tests: everything on
// 127.0.0.1 with free ports, the function binaries, the bridge, no demo.
func devOptions() stack.Options {
	o := stack.DefaultOptions()
	o.NATSListen = "127.0.0.1:0"
	o.Functions = binDir
	o.Gateway.Addr = "127.0.0.1:0"
	o.BridgeOptions.HTTPAddr = "127.0.0.1:0"
	o.Demo = false
	o.Logger = testLogger()
	return o
}

// startStack starts a stack with devOptions changed by mod, closed when the
// test ends.
func startStack(t testing.TB, mod func(*stack.Options)) *stack.Stack {
	t.Helper()
	o := devOptions()
	if mod != nil {
		mod(&o)
	}
	// stack.Start hands ctx to the demo backend, which stops publishing when
	// it ends (see the report on test/stack), so it must outlive the stack:
	// it is cancelled after Close.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := stack.Start(ctx, o)
	if err != nil {
		t.Fatalf("stack.Start: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("stack.Close: %v", err)
		}
	})
	return st
}

// service is a business service: its own NATS connection and the subjects
// client, as a real one would have.
type service struct {
	nc    *nats.Conn
	c     *subjects.Client
	names subjects.Names
}

func newService(t testing.TB, st *stack.Stack) *service {
	t.Helper()
	nc, err := nats.Connect(st.NATSURL(), nats.Name("e2e-service"))
	if err != nil {
		t.Fatalf("connect to NATS %s: %v", st.NATSURL(), err)
	}
	t.Cleanup(nc.Close)
	c, err := subjects.NewClient(nc, "")
	if err != nil {
		t.Fatalf("subjects.NewClient: %v", err)
	}
	return &service{nc: nc, c: c, names: c.Names()}
}

func (s *service) ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// connList asks the bridge (P.api.conn.list) for registered connections.
func (s *service) connList(t testing.TB, req subjects.ConnListRequest) subjects.ConnListReply {
	t.Helper()
	rep, err := s.c.ConnList(s.ctx(t), req)
	if err != nil {
		t.Fatalf("conn.list %+v: %v", req, err)
	}
	return rep
}

// waitListed waits until the bridge's index, which expands broadcast, group
// and user sends, counts want connections matching req.
func (s *service) waitListed(t testing.TB, req subjects.ConnListRequest, want int) {
	t.Helper()
	var got int
	waitFor(t, fmt.Sprintf("the bridge to list %d connections for %+v", want, req), func() bool {
		got = s.connList(t, req).Total
		return got == want
	})
}

// registered reports whether the registry bucket holds token.
func (s *service) registered(t testing.TB, token string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	kv, err := s.c.JetStream().KeyValue(ctx, s.names.Bucket())
	if err != nil {
		t.Fatalf("registry bucket %s: %v", s.names.Bucket(), err)
	}
	_, err = kv.Get(ctx, token)
	switch {
	case err == nil:
		return true
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return false
	}
	t.Fatalf("registry get %s: %v", token, err)
	return false
}

// recorder keeps every inbound event (P.in.>) seen on a core subscription.
type recorder struct {
	mu      sync.Mutex
	events  []subjects.Event
	changed chan struct{} // closed and replaced on every new event
	bad     []string
}

func (s *service) record(t testing.TB) *recorder {
	t.Helper()
	r := &recorder{changed: make(chan struct{})}
	sub, err := s.c.Subscribe(func(ev subjects.Event) {
		r.mu.Lock()
		r.events = append(r.events, ev)
		close(r.changed)
		r.changed = make(chan struct{})
		r.mu.Unlock()
	}, func(subject string, err error) {
		r.mu.Lock()
		r.bad = append(r.bad, subject+": "+err.Error())
		r.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("subscribe inbound: %v", err)
	}
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.bad) > 0 {
			t.Errorf("undecodable inbound events: %q", r.bad)
		}
	})
	if err := s.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

// wait returns the first event matching match, waiting for it.
func (r *recorder) wait(t testing.TB, what string, match func(subjects.Event) bool) subjects.Event {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for _, ev := range r.events {
			if match(ev) {
				r.mu.Unlock()
				return ev
			}
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("gave up after %v waiting for %s; inbound events seen: %s", waitTimeout, what, r.summary())
		}
	}
}

// find returns every event matching match so far.
func (r *recorder) find(match func(subjects.Event) bool) []subjects.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []subjects.Event
	for _, ev := range r.events {
		if match(ev) {
			out = append(out, ev)
		}
	}
	return out
}

func (r *recorder) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for i, ev := range r.events {
		if i == 20 {
			fmt.Fprintf(&b, " … (%d in all)", len(r.events))
			break
		}
		fmt.Fprintf(&b, " %s/%s", ev.Kind, ev.Token)
		if ev.Disconnect != nil {
			b.WriteString("/" + ev.Disconnect.Reason)
		}
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

func isKind(k subjects.Kind, token string) func(subjects.Event) bool {
	return func(ev subjects.Event) bool { return ev.Kind == k && (token == "" || ev.Token == token) }
}

// connectFor matches the connect event of the client that offered the
// subprotocol tag.
func connectFor(tag string) func(subjects.Event) bool {
	return func(ev subjects.Event) bool {
		if ev.Kind != subjects.KindConnect || ev.Connect == nil {
			return false
		}
		for _, p := range ev.Connect.Protocols {
			if p == tag {
				return true
			}
		}
		return false
	}
}

// frame is one WebSocket message a client received.
type frame struct {
	typ  websocket.MessageType
	data []byte
}

// client is a real WebSocket client of the emulator. A goroutine reads
// every frame into a channel, so close frames are handled and nothing is
// missed while the test does something else.
type client struct {
	ws     *websocket.Conn
	tag    string // the subprotocol it offered first
	token  string // known once its connect event was seen
	frames chan frame
	done   chan struct{}
	err    error // why reading stopped, once done is closed
}

var tagSeq atomic.Int64

// newTag is a unique subprotocol by which a test recognizes a client's
// connect event (with auth off, the client's first choice is accepted).
func newTag() string { return "e2e-" + strconv.FormatInt(tagSeq.Add(1), 10) }

// dialRaw opens a WebSocket to the stack offering protocols.
func dialRaw(ctx context.Context, st *stack.Stack, protocols ...string) (*websocket.Conn, *http.Response, error) {
	dctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	return websocket.Dial(dctx, st.WSURL(), &websocket.DialOptions{Subprotocols: protocols})
}

// dial connects a client offering protocols (a fresh tag when none).
func dial(t testing.TB, st *stack.Stack, protocols ...string) *client {
	t.Helper()
	if len(protocols) == 0 {
		protocols = []string{newTag()}
	}
	ws, _, err := dialRaw(context.Background(), st, protocols...)
	if err != nil {
		t.Fatalf("dial %s: %v", st.WSURL(), err)
	}
	return wrap(t, ws, protocols[0])
}

func wrap(t testing.TB, ws *websocket.Conn, tag string) *client {
	ws.SetReadLimit(1 << 20)
	c := &client{ws: ws, tag: tag, frames: make(chan frame, 4096), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			typ, data, err := ws.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			c.frames <- frame{typ, data}
		}
	}()
	t.Cleanup(func() {
		_ = ws.CloseNow()
		<-c.done
	})
	return c
}

// dialKnown connects a client and learns its token from its connect event.
func dialKnown(t testing.TB, st *stack.Stack, rec *recorder) *client {
	t.Helper()
	c := dial(t, st)
	c.token = rec.wait(t, "connect event of "+c.tag, connectFor(c.tag)).Token
	return c
}

// dialMany connects n clients in parallel and learns their tokens.
func dialMany(t testing.TB, st *stack.Stack, rec *recorder, n int) []*client {
	t.Helper()
	cs := make([]*client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			tag := newTag()
			ws, _, err := dialRaw(context.Background(), st, tag)
			if err != nil {
				errs[i] = err
				return
			}
			cs[i] = &client{ws: ws, tag: tag}
		}()
	}
	wg.Wait()
	for i, c := range cs {
		if c != nil {
			cs[i] = wrap(t, c.ws, c.tag)
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("dial %d clients: %v", n, err)
	}
	for _, c := range cs {
		c.token = rec.wait(t, "connect event of "+c.tag, connectFor(c.tag)).Token
	}
	return cs
}

func (c *client) write(t testing.TB, typ websocket.MessageType, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, typ, data); err != nil {
		t.Fatalf("client %s: write: %v", c.tag, err)
	}
}

// next returns the next frame the client received.
func (c *client) next(t testing.TB, what string) frame {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	select {
	case f := <-c.frames:
		return f
	default:
	}
	select {
	case f := <-c.frames:
		return f
	case <-c.done:
		select {
		case f := <-c.frames:
			return f
		default:
		}
		t.Fatalf("client %s (%s): connection ended (%v) while waiting for %s", c.tag, c.token, c.err, what)
	case <-timer.C:
		t.Fatalf("client %s (%s): gave up after %v waiting for %s", c.tag, c.token, waitTimeout, what)
	}
	return frame{}
}

// expectText fails unless the next frame is the text want.
func (c *client) expectText(t testing.TB, want string) {
	t.Helper()
	f := c.next(t, fmt.Sprintf("text %q", want))
	if f.typ != websocket.MessageText || string(f.data) != want {
		t.Fatalf("client %s (%s): got %v %q, want text %q", c.tag, c.token, f.typ, f.data, want)
	}
}

// closed waits for the connection to end and returns why.
func (c *client) closed(t testing.TB) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(waitTimeout):
		t.Fatalf("client %s (%s): still open after %v", c.tag, c.token, waitTimeout)
		return nil
	}
}

// waitFor polls cond until it holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metricValue reads one sample of the bridge's /metrics ("" labels match
// a metric without labels); the second result is false when it is absent.
func metricValue(t testing.TB, url, name, labels string) (float64, bool) {
	t.Helper()
	if url == "" {
		t.Fatal("the bridge serves no /metrics (HTTPAddr empty)")
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, want+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v, true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return 0, false
}

// echoBackend answers every client message with the same bytes and type
// through subjects.Client, as a business service would.
func (s *service) echo(t testing.TB) *atomic.Int64 {
	t.Helper()
	var failures atomic.Int64
	sub, err := s.c.Subscribe(func(ev subjects.Event) {
		if ev.Kind != subjects.KindMessage {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		var err error
		if ev.Binary {
			err = s.c.SendBinary(ctx, ev.Token, ev.Data)
		} else {
			err = s.c.SendText(ctx, ev.Token, string(ev.Data))
		}
		if err != nil {
			failures.Add(1)
		}
	})
	if err != nil {
		t.Fatalf("subscribe inbound: %v", err)
	}
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		if n := failures.Load(); n > 0 {
			t.Errorf("echo backend: %d sends failed", n)
		}
	})
	if err := s.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &failures
}

// timeAfter is the bound of one wait in a select.
func timeAfter() <-chan time.Time { return time.After(waitTimeout) }

// waitMetric waits until a sample of /metrics reaches at least min. The
// bridge counts a push when the gateway's answer is back, which can be
// after the client has the frame.
func waitMetric(t testing.TB, url, name, labels string, min float64) {
	t.Helper()
	var v float64
	var ok bool
	deadline := time.Now().Add(waitTimeout)
	for {
		if v, ok = metricValue(t, url, name, labels); ok && v >= min {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s{%s} = %v (present %v) after %v, want at least %v", name, labels, v, ok, waitTimeout, min)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
