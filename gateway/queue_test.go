package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestNonReadersCostOnlyThemselves: 100 clients that never read and one
// that does get the same large broadcasts, pushed over HTTP the way a
// bridge pushes them (one lane per connection, in order, sharing 64 push
// slots, each push carrying Ws-Seq). Every push is answered once its frame
// is queued, so the non-readers hold no slot: the reader gets every
// broadcast, and each non-reader, once its send queue overflows, has that
// push refused with 410, is closed with 1008 and gets exactly one
// disconnect event. The write timeout is an hour: a push that waited for
// the socket write of a client that does not read would never be answered
// here, and the reader would get nothing past the first broadcasts.
//
// The sockets' kernel buffers are made small (64 KiB or so instead of up to
// 4 MiB), so a client that does not read fills up after a few broadcasts
// rather than after some 30 of them: the same behaviour at a tenth of the
// bytes, which counts on a loaded machine under the race detector.
func TestNonReadersCostOnlyThemselves(t *testing.T) {
	const (
		nonReaders = 100
		slots      = 64        // the bridge's default push concurrency
		size       = 128 << 10 // of each broadcast
		window     = 2         // broadcasts the reader may be behind: it keeps up
		minRounds  = 12
		maxRounds  = 200 // bounds the wait for every non-reader to overflow
		sockBuffer = 32 << 10
		// progress bounds the wait for the reader's next broadcast: a hang,
		// not a speed (the machine may be loaded).
		progress = 6 * waitTimeout
	)
	s := natstest.Start(t)
	nc, _, names := provisioned(t, s)
	discs := make(chan *nats.Msg, 4*nonReaders)
	sub, err := nc.ChanSubscribe(names.InboundKind(subjects.KindDisconnect), discs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	fns, err := StartFunctions(context.Background(), FunctionsOptions{Functions: functions.DefaultOptions(), Conn: nc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fns.Close() })
	srv := serveSmallBuffers(t, sockBuffer, func(o *Options) {
		fns.Apply(o)
		o.NATS, o.InstanceID, o.PushURL = nc, "edge-q", "http://127.0.0.1:1/push"
		o.MaxMessageSize = size
		o.SendQueueBytes = 2 * size
		o.WriteTimeout = time.Hour
		// A non-reader quiet for a ping interval, which a loaded machine
		// can make of a few broadcasts, would be closed for its missing
		// pong instead: a close this test is not about.
		o.PingInterval = -1
	})
	smallDialer := &net.Dialer{}
	wsClient := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := smallDialer.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(sockBuffer)
		}
		return c, err
	}}}

	dial := func() (*websocket.Conn, string) {
		t.Helper()
		before := map[string]bool{}
		for _, id := range srv.g.ConnectionIDs() {
			before[id] = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws://"+srv.ws+DefaultWSPath, &websocket.DialOptions{HTTPClient: wsClient})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.CloseNow() })
		c.SetReadLimit(2 * size)
		var id string
		waitFor(t, "the new connection accepted", func() bool {
			for _, x := range srv.g.ConnectionIDs() {
				if !before[x] {
					id = x
					return true
				}
			}
			return false
		})
		return c, id
	}
	reader, readerID := dial()
	got := make(chan int, maxRounds)
	readErr := make(chan error, 1)
	go func() {
		for {
			_, data, err := reader.Read(context.Background())
			if err != nil {
				readErr <- err
				return
			}
			k, _, _ := strings.Cut(string(data[:min(len(data), 16)]), ":")
			n, err := strconv.Atoi(k)
			if err != nil || len(data) != size {
				readErr <- errors.New("reader got a frame that is no broadcast: " + string(data[:min(len(data), 32)]))
				return
			}
			got <- n
		}
	}()
	type client struct {
		ws *websocket.Conn
		id string
	}
	var quiet []client
	for range nonReaders {
		c, id := dial()
		quiet = append(quiet, client{c, id})
	}

	// The pushes: one lane per connection, in order, each push holding
	// one of the shared slots until it is answered.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: slots}}
	t.Cleanup(hc.CloseIdleConnections)
	payloads := make([]string, maxRounds) // JSON strings, made once per broadcast
	var payloadMu sync.Mutex
	payload := func(k int) string {
		payloadMu.Lock()
		defer payloadMu.Unlock()
		if payloads[k] == "" {
			data := strconv.Itoa(k) + ":"
			b, _ := json.Marshal(data + strings.Repeat("x", size-len(data)))
			payloads[k] = string(b)
		}
		return payloads[k]
	}
	type ending struct {
		id     string
		round  int
		status int
		body   string
	}
	sem := make(chan struct{}, slots)
	ended := make(chan ending, nonReaders+1)
	var lanes sync.WaitGroup
	laneIn := map[string]chan int{}
	for _, id := range append([]string{readerID}, func() (ids []string) {
		for _, c := range quiet {
			ids = append(ids, c.id)
		}
		return ids
	}()...) {
		in := make(chan int, maxRounds)
		laneIn[id] = in
		lanes.Add(1)
		go func() {
			defer lanes.Done()
			idJSON, _ := json.Marshal(id)
			for k := range in {
				body := `{"websocket":{"action":"data send","secConnectionID":` + string(idJSON) +
					`,"dataType":"text","data":` + payload(k) + `}}`
				req, _ := http.NewRequest(http.MethodPost, "http://"+srv.push+DefaultPushPath, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(subjects.HeaderSeq, strconv.Itoa(k+1)) // the broadcast's stream sequence
				sem <- struct{}{}
				resp, err := hc.Do(req)
				<-sem
				if err != nil {
					ended <- ending{id, k, 0, err.Error()}
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					// A bridge dead-letters it and drops the connection
					// from later fan-outs.
					ended <- ending{id, k, resp.StatusCode, string(b)}
					return
				}
			}
		}()
	}

	endings := map[string]ending{}
	collect := func() {
		for {
			select {
			case e := <-ended:
				if e.id == readerID {
					t.Fatalf("push of broadcast %d to the reader: %d %s", e.round, e.status, e.body)
				}
				endings[e.id] = e
			default:
				return
			}
		}
	}
	next := 0 // the broadcast the reader is to get next
	awaitReader := func(upTo int) {
		t.Helper()
		for ; next <= upTo; next++ {
			select {
			case n := <-got:
				if n != next {
					t.Fatalf("reader got broadcast %d, want %d", n, next)
				}
			case err := <-readErr:
				t.Fatalf("reader: %v", err)
			case <-time.After(progress):
				collect()
				t.Fatalf("the reader never got broadcast %d (%d of %d non-readers refused so far): are pushes waiting for clients that do not read?",
					next, len(endings), nonReaders)
			}
		}
	}
	rounds := 0
	for ; rounds < maxRounds; rounds++ {
		collect()
		if rounds >= minRounds && len(endings) == nonReaders {
			break
		}
		awaitReader(rounds - window)
		for _, in := range laneIn {
			in <- rounds
		}
	}
	for _, in := range laneIn {
		close(in)
	}
	awaitReader(rounds - 1)
	lanes.Wait()
	collect()
	if len(endings) != nonReaders {
		t.Fatalf("after %d broadcasts of %d KiB, %d of %d clients that never read still had their pushes taken",
			rounds, size>>10, nonReaders-len(endings), nonReaders)
	}
	for _, e := range endings {
		if e.status != http.StatusGone || !strings.Contains(e.body, "send queue is full") {
			t.Errorf("last push to non-reader %s (broadcast %d): %d %s, want 410 send queue full", e.id, e.round, e.status, e.body)
		}
	}
	first, last := maxRounds, 0
	for _, e := range endings {
		first, last = min(first, e.round), max(last, e.round)
	}
	t.Logf("%d broadcasts of %d KiB: the non-readers' queues overflowed at broadcasts %d to %d", rounds, size>>10, first, last)

	// Each non-reader, once it reads, finds what its socket held and then
	// the 1008.
	codes := make(chan websocket.StatusCode, nonReaders)
	for _, c := range quiet {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), progress)
			defer cancel()
			for {
				_, r, err := c.ws.Reader(ctx)
				if err == nil {
					_, err = io.Copy(io.Discard, r)
				}
				if err != nil {
					codes <- websocket.CloseStatus(err)
					return
				}
			}
		}()
	}
	for range nonReaders {
		if code := <-codes; code != websocket.StatusPolicyViolation {
			t.Errorf("a non-reader ended with close status %d, want 1008", code)
		}
	}

	// One disconnect event each, by the cleanup function: every cleanup
	// has returned (so published) once the gateway counts the cleanups,
	// which an edge instance runs from its retry queue after the end.
	waitFor(t, "every non-reader's end counted", func() bool {
		return testutil.ToFloat64(srv.g.m.disconnects.WithLabelValues(discSlow)) == nonReaders
	})
	waitFor(t, "every non-reader's cleanup returned", func() bool { return srv.g.Stats().Cleanups == nonReaders })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	events := map[string][]string{}
	for len(discs) > 0 {
		m := <-discs
		var d subjects.DisconnectEvent
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatalf("disconnect event %q: %v", m.Data, err)
		}
		events[d.Token] = append(events[d.Token], d.Reason)
	}
	for _, c := range quiet {
		if r := events[subjects.Token(c.id)]; len(r) != 1 || r[0] != subjects.ReasonClient {
			t.Errorf("non-reader %s: disconnect events %q, want one, client", c.id, r)
		}
	}
	if r := events[subjects.Token(readerID)]; len(r) != 0 {
		t.Errorf("the reader got disconnect events %q", r)
	}
	if st := srv.g.Stats(); st.Cleanups != nonReaders || st.ConnectionsOpen != 1 {
		t.Errorf("Cleanups %d ConnectionsOpen %d, want %d and 1", st.Cleanups, st.ConnectionsOpen, nonReaders)
	}
	waitFor(t, "the send queues empty", func() bool { return srv.g.Stats().SendQueueBytes == 0 })
}

// serveSmallBuffers serves an edge instance like serveAll, with the kernel
// send buffer of every accepted socket set to sndbuf.
func serveSmallBuffers(t *testing.T, sndbuf int, tweak func(*Options)) *served {
	t.Helper()
	o := Options{Addr: "127.0.0.1:0", PushAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}
	tweak(&o)
	g, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := Listen(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ls.WS = sndbufListener{ls.WS, sndbuf}
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
	return &served{g: g, stop: stop, ws: ls.WS.Addr().String(), push: ls.Push.Addr().String(), ops: ls.HTTP.Addr().String()}
}

type sndbufListener struct {
	net.Listener
	size int
}

func (l sndbufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.size)
	}
	return c, err
}

// TestSendQueueBounds: a connection's send queue takes frames up to
// SendQueueMessages and SendQueueBytes and refuses the one past either,
// ending the connection; an empty queue takes a frame larger than the byte
// bound. The queue is driven directly with its writer held busy (as it is
// while a client does not read), since how much a real socket absorbs
// before its writer blocks is the kernel's choice.
func TestSendQueueBounds(t *testing.T) {
	frames := func(sizes ...int) [][]byte {
		var out [][]byte
		for _, n := range sizes {
			out = append(out, make([]byte, n))
		}
		return out
	}
	tests := []struct {
		name          string
		bytes         int64
		messages      int
		taken, refuse [][]byte
	}{
		{"at the message bound", 1 << 20, 3, frames(1, 1, 1), frames(1)},
		{"at the byte bound", 100, 1000, frames(60, 40), frames(1)},
		{"one byte past it", 100, 1000, frames(60), frames(41)},
		{"larger than the byte bound, queue empty", 100, 1000, frames(150), frames(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := New(Options{Register: &fakeFn{}, Transfer: &fakeFn{}, Cleanup: &fakeFn{},
				SendQueueBytes: tt.bytes, SendQueueMessages: tt.messages})
			if err != nil {
				t.Fatal(err)
			}
			c := &conn{g: g, id: "c", ready: make(chan struct{}), writing: true}
			for i, f := range tt.taken {
				if got := c.send(seq{n: uint64(i + 1), set: true}, websocket.MessageBinary, f); got != enqueuedOK {
					t.Fatalf("frame %d of %d bytes: %v, want it queued", i, len(f), got)
				}
			}
			if got := c.send(seq{n: 100, set: true}, websocket.MessageBinary, tt.refuse[0]); got != enqueuedOverflow {
				t.Fatalf("frame past the bound: %v, want an overflow", got)
			}
			if c.queue != nil || c.queued != 0 || g.queuedBytes.Load() != 0 || c.closeWith != closeSlow {
				t.Errorf("after the overflow: %d queued (%d bytes, gauge %d), close %v; want the queue dropped and a 1008 close asked",
					len(c.queue), c.queued, g.queuedBytes.Load(), c.closeWith)
			}
			if got := c.send(seq{n: 101, set: true}, websocket.MessageBinary, tt.refuse[0]); got != enqueuedEnded {
				t.Errorf("a push after the overflow: %v, want ended", got)
			}
			if got := c.send(seq{n: 1, set: true}, websocket.MessageBinary, tt.refuse[0]); got != enqueuedRepeat {
				t.Errorf("a repeat of a frame taken before the overflow: %v, want a repeat", got)
			}
			if got := c.closeAfterQueue(seq{}); got != enqueuedEnded {
				t.Errorf("a close after the overflow: %v, want ended", got)
			}
		})
	}
}
