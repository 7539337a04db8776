package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// quotaStack is an edge instance with the real functions in process on an
// embedded NATS whose store holds maxStore bytes, its streams provisioned
// with the given bounds.
type quotaStack struct {
	*served
	nc    *nats.Conn
	js    jetstream.JetStream
	names subjects.Names
}

func newQuotaStack(t *testing.T, maxStore int64, streams subjects.StreamOptions, tweak func(*Options)) *quotaStack {
	t.Helper()
	s := natstest.Start(t, func(o *server.Options) { o.JetStreamMaxStore = maxStore })
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew("ws")
	if err := subjects.Provision(context.Background(), js, names, streams); err != nil {
		t.Fatal(err)
	}
	fns, err := StartFunctions(context.Background(), FunctionsOptions{Functions: functions.DefaultOptions(), Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fns.Close() })
	srv := serveAll(t, func(o *Options) {
		fns.Apply(o)
		o.NATS, o.InstanceID, o.PushURL = nc, "edge-quota", "http://127.0.0.1:1/push"
		if tweak != nil {
			tweak(o)
		}
	})
	return &quotaStack{served: srv, nc: nc, js: js, names: names}
}

// dial connects a client and returns it with its connection id.
func (q *quotaStack) dial(t *testing.T) (*websocket.Conn, string) {
	t.Helper()
	before := map[string]bool{}
	for _, id := range q.g.ConnectionIDs() {
		before[id] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+q.ws+DefaultWSPath, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	var id string
	waitFor(t, "the new connection to be accepted", func() bool {
		for _, x := range q.g.ConnectionIDs() {
			if !before[x] {
				id = x
				return true
			}
		}
		return false
	})
	return c, id
}

// streamBytes is what a stream holds now.
func (q *quotaStack) streamBytes(t *testing.T, name string) (bytes, msgs uint64) {
	t.Helper()
	st, err := q.js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	return info.State.Bytes, info.State.Msgs
}

// readyz returns the status and body of /readyz.
func readyz(t *testing.T, ops string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + ops + "/readyz")
	if err != nil {
		t.Fatalf("readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// inboundTally counts the message events stored per connection token, as
// a backend subscribed to P.in.message.* sees them.
type inboundTally struct {
	mu    sync.Mutex
	msgs  map[string]int
	bytes map[string]int
}

func tallyInbound(t *testing.T, q *quotaStack) *inboundTally {
	t.Helper()
	tl := &inboundTally{msgs: map[string]int{}, bytes: map[string]int{}}
	sub, err := q.nc.Subscribe(q.names.InboundKind(subjects.KindMessage), func(m *nats.Msg) {
		tok := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		tl.mu.Lock()
		tl.msgs[tok]++
		tl.bytes[tok] += len(m.Data)
		tl.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return tl
}

func (tl *inboundTally) of(id string) (msgs, bytes int) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tok := subjects.Token(id)
	return tl.msgs[tok], tl.bytes[tok]
}

// flood writes size-byte messages to c as fast as it takes them until the
// connection ends, and returns what it wrote, for how long, and the close
// the gateway sent.
func flood(c *websocket.Conn, size int) (sent, bytes int, took time.Duration, closeErr error) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*waitTimeout)
	defer cancel()
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.Read(ctx); err != nil {
				closed <- err
				return
			}
		}
	}()
	msg := make([]byte, size)
	start := time.Now()
	for ctx.Err() == nil {
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			break
		}
		sent++
		bytes += size
	}
	took = time.Since(start)
	return sent, bytes, took, <-closed
}

// TestFloodingClientIsClosed is the attack of clients writing into WS_IN as
// fast as the gateway takes it: one sending many small messages, one
// sending large ones. The limits are a tenth of the defaults or less, so
// that the flood passes them on a loaded machine under the race detector
// too (it stores a few MB/s there). Each is closed with
// 1008 ("inbound rate exceeded") once past its burst, its message past the
// limit not stored, and its disconnect event published as for any client;
// a client writing at a human pace beside them keeps being served, every
// message stored; WS_IN stays within its byte bound throughout.
func TestFloodingClientIsClosed(t *testing.T) {
	const inMax, dlqMax = 4 << 20, 1 << 20
	const (
		inRate, inBurst           = 10, 100
		inBytesRate, inBytesBurst = 64 << 10, 512 << 10
	)
	q := newQuotaStack(t, 256<<20, subjects.StreamOptions{OutMaxBytes: 8 << 20, InMaxBytes: inMax, DLQMaxBytes: dlqMax}, func(o *Options) {
		o.InRate, o.InBurst, o.InBytesRate, o.InBytesBurst = inRate, inBurst, inBytesRate, inBytesBurst
	})
	discs := disconnects(t, q.nc, q.names)
	tally := tallyInbound(t, q)

	calm, calmID := q.dial(t)
	small, smallID := q.dial(t)
	large, largeID := q.dial(t)

	// The calm client sends a message every 200ms (5 a second, half the
	// rate) while the others flood.
	stopCalm := make(chan struct{})
	calmSent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { calmSent <- n }()
		for {
			select {
			case <-stopCalm:
				return
			case <-time.After(200 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			err := calm.Write(ctx, websocket.MessageText, []byte("calm "+itoa(n)))
			cancel()
			if err != nil {
				t.Errorf("calm client's message %d: %v", n, err)
				return
			}
			n++
		}
	}()

	type result struct {
		name, id        string
		size            int
		sent, bytes     int
		took            time.Duration
		closeErr        error
		wantWhy, reason string
	}
	results := []*result{
		{name: "small messages", id: smallID, size: 1 << 10, wantWhy: limitedMessages, reason: "messages a second"},
		{name: "large messages", id: largeID, size: 64 << 10, wantWhy: limitedBytes, reason: "bytes a second"},
	}
	var wg sync.WaitGroup
	for i, c := range []*websocket.Conn{small, large} {
		r := results[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.sent, r.bytes, r.took, r.closeErr = flood(c, r.size)
		}()
	}
	wg.Wait()
	close(stopCalm)
	calmN := <-calmSent

	for _, r := range results {
		if got := websocket.CloseStatus(r.closeErr); got != websocket.StatusPolicyViolation {
			t.Errorf("%s: closed with %v (%v), want 1008", r.name, got, r.closeErr)
		}
		if r.closeErr == nil || !strings.Contains(r.closeErr.Error(), "inbound rate exceeded") || !strings.Contains(r.closeErr.Error(), r.reason) {
			t.Errorf("%s: close %v, want the reason \"inbound rate exceeded: ... %s\"", r.name, r.closeErr, r.reason)
		}
	}
	// Each flooder's end is announced as any client's: one disconnect
	// event, after its last stored message.
	seen := map[string]bool{}
	for !seen[subjects.Token(smallID)] || !seen[subjects.Token(largeID)] {
		select {
		case m := <-discs:
			var d subjects.DisconnectEvent
			if err := json.Unmarshal(m.Data, &d); err != nil {
				t.Fatalf("disconnect event %q: %v", m.Data, err)
			}
			if seen[d.Token] {
				t.Errorf("a second disconnect event for %s", d.Token)
			}
			seen[d.Token] = true
			if d.Token == subjects.Token(calmID) {
				t.Errorf("the calm client was disconnected: %+v", d)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("disconnect events seen %v: a flooder's never came", seen)
		}
	}

	// The calm client was served throughout, and still is.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := calm.Write(ctx, websocket.MessageText, []byte("after the flood")); err != nil {
		t.Fatalf("calm client after the flood: %v", err)
	}
	waitFor(t, "every message of the calm client stored", func() bool {
		n, _ := tally.of(calmID)
		return n == calmN+1
	})

	for _, r := range results {
		stored, storedBytes := tally.of(r.id)
		if stored >= r.sent {
			t.Errorf("%s: %d of %d messages stored: the one past the limit must not be", r.name, stored, r.sent)
		}
		t.Logf("%s (%d B each): wrote %d messages, %d KiB, in %v (%.1f MB/s) before the close; %d messages, %d KiB stored in WS_IN",
			r.name, r.size, r.sent, r.bytes>>10, r.took.Round(time.Millisecond), float64(r.bytes)/r.took.Seconds()/1e6, stored, storedBytes>>10)
	}
	t.Logf("calm client: %d messages, every one stored, connection open", calmN+1)

	for _, x := range []struct {
		name  string
		bound uint64
	}{{q.names.StreamIn(), inMax}, {q.names.StreamDLQ(), dlqMax}} {
		b, n := q.streamBytes(t, x.name)
		t.Logf("%s: %d bytes in %d messages (bound %d)", x.name, b, n, x.bound)
		if b > x.bound {
			t.Errorf("%s holds %d bytes, past its bound of %d", x.name, b, x.bound)
		}
	}
	for _, why := range []string{limitedMessages, limitedBytes} {
		if n := metric(t, q.ops, `wsbridge_gateway_inbound_limited_total{reason="`+why+`"}`); n != 1 {
			t.Errorf("inbound_limited_total{reason=%q} = %d, want 1", why, n)
		}
	}
	if n := metric(t, q.ops, `wsbridge_gateway_disconnects_total{reason="rate"}`); n != 2 {
		t.Errorf(`disconnects_total{reason="rate"} = %d, want 2`, n)
	}
}

// TestReadyzFollowsJetStreamRefusals fills the NATS server's store with
// another stream, as a flood did: JetStream refuses the instance's writes
// (its record's refresh, the clients' events), and /readyz answers 503
// saying so, while /healthz stays 200. Once the store has room again the
// instance is ready again and serves clients.
func TestReadyzFollowsJetStreamRefusals(t *testing.T) {
	const store = 32 << 20
	q := newQuotaStack(t, store, subjects.StreamOptions{OutMaxBytes: 2 << 20, InMaxBytes: 2 << 20, DLQMaxBytes: 1 << 20}, func(o *Options) {
		o.InstanceTTL = 3 * time.Second // refreshed every second
	})
	waitFor(t, "/readyz to answer 200", func() bool { code, _ := readyz(t, q.ops); return code == http.StatusOK })
	c, _ := q.dial(t)

	// Another stream takes every byte the store has left.
	ctx := context.Background()
	if _, err := q.js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILLER", Subjects: []string{"filler.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 256<<10)
	filled := 0
	var refusal error
	for filled <= 2*store {
		if _, err := q.js.Publish(ctx, "filler.x", chunk); err != nil {
			refusal = err
			break
		}
		filled += len(chunk)
	}
	if refusal == nil {
		t.Fatalf("the store took %d bytes, twice its size, without refusing", filled)
	}
	t.Logf("store full after %d KiB of filler: %v", filled>>10, refusal)
	full := time.Now()

	// A client's message is refused now: it is closed, as before.
	wctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	_ = c.Write(wctx, websocket.MessageText, []byte("into a full store"))
	if got := closeStatus(t, c); got != websocket.StatusInternalError {
		t.Errorf("a client whose message the store refused: closed with %v, want 1011", got)
	}
	var body string
	waitFor(t, "/readyz to answer 503 naming the refusal", func() bool {
		code, b := readyz(t, q.ops)
		body = b
		return code == http.StatusServiceUnavailable && strings.Contains(b, "JetStream refuses writes")
	})
	t.Logf("not ready %v after the store filled: %s", time.Since(full).Round(time.Millisecond), strings.TrimSpace(body))
	if resp, err := http.Get("http://" + q.ops + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz while the store is full: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}
	if n := metric(t, q.ops, "wsbridge_gateway_jetstream_refusing"); n != 1 {
		t.Errorf("jetstream_refusing = %d while the store is full, want 1", n)
	}

	if err := q.js.DeleteStream(ctx, "FILLER"); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitFor(t, "/readyz to answer 200 once the store has room", func() bool { code, _ := readyz(t, q.ops); return code == http.StatusOK })
	t.Logf("ready again %v after the store had room", time.Since(freed).Round(time.Millisecond))

	c2, id2 := q.dial(t)
	tally := tallyInbound(t, q)
	wctx2, cancel2 := context.WithTimeout(ctx, waitTimeout)
	defer cancel2()
	if err := c2.Write(wctx2, websocket.MessageText, []byte("the store has room")); err != nil {
		t.Fatalf("a client after the store had room: %v", err)
	}
	waitFor(t, "the message after the store had room to be stored", func() bool { n, _ := tally.of(id2); return n == 1 })
	if n := metric(t, q.ops, "wsbridge_gateway_jetstream_refusing"); n != 0 {
		t.Errorf("jetstream_refusing = %d once writes succeed, want 0", n)
	}
}
