package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// pushed is one frame a test pushed and the gateway answered 200 for.
type pushed struct {
	seq      uint64
	dataType string
	data     []byte
}

// pushSeq pushes one frame to id with Ws-Seq seq, as a bridge does, and
// returns the answer's status.
func pushSeq(t *testing.T, pushAddr, id string, seq uint64, dataType string, data []byte) int {
	t.Helper()
	body := string(data)
	if dataType == subjects.DataBinary {
		body = base64.StdEncoding.EncodeToString(data)
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+pushAddr+DefaultPushPath, strings.NewReader(pushBody("data send", id, dataType, body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(subjects.HeaderSeq, strconv.FormatUint(seq, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("push %d: %v", seq, err)
	}
	// Read to the end, so the connection is used again.
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// deadLetters returns every message WS_DLQ holds.
func deadLetters(t *testing.T, js jetstream.JetStream, names subjects.Names) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	st, err := js.Stream(ctx, names.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

// nonReader dials srv with a small receive buffer and never reads.
func nonReader(t *testing.T, srv *served) (*websocket.Conn, string) {
	t.Helper()
	small := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(8 << 10)
		}
		return c, err
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+srv.ws+DefaultWSPath, &websocket.DialOptions{HTTPClient: small})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	c.SetReadLimit(1 << 20)
	var id string
	waitFor(t, "the connection accepted", func() bool {
		ids := srv.g.ConnectionIDs()
		if len(ids) == 1 {
			id = ids[0]
		}
		return id != ""
	})
	return c, id
}

// frameData is the i-th frame of a test: its sequence first, as the
// checker of the chaos runs names its messages, then padding.
func frameData(seq uint64, size int) (string, []byte) {
	dataType := subjects.DataText
	if seq%3 == 0 {
		dataType = subjects.DataBinary
	}
	data := []byte(fmt.Sprintf("m%d ", seq))
	data = append(data, bytes.Repeat([]byte{'x'}, size-len(data))...)
	if dataType == subjects.DataBinary {
		data[len(data)-1] = 0xff // not text
	}
	return dataType, data
}

// checkDeadLetters checks that every frame answered 200 and not received
// is dead-lettered once for token, in the bridge's shape, and that no dead
// letter names anything else; it returns how many there are.
func checkDeadLetters(t *testing.T, js jetstream.JetStream, names subjects.Names, id string, taken []pushed, received map[uint64]bool) int {
	t.Helper()
	token := subjects.Token(id)
	byID := map[uint64]*jetstream.RawStreamMsg{}
	for _, m := range deadLetters(t, js, names) {
		seq, err := strconv.ParseUint(m.Header.Get(subjects.HeaderSeq), 10, 64)
		if err != nil {
			t.Errorf("dead letter %d on %s without a Ws-Seq: %v", m.Sequence, m.Subject, m.Header)
			continue
		}
		if byID[seq] != nil {
			t.Errorf("frame %d dead-lettered twice", seq)
		}
		byID[seq] = m
	}
	n := 0
	for _, p := range taken {
		m := byID[p.seq]
		delete(byID, p.seq)
		if m == nil {
			if !received[p.seq] {
				t.Errorf("frame %d: answered 200, neither received nor dead-lettered", p.seq)
			}
			continue
		}
		n++
		want := map[string]string{
			subjects.HeaderReason: "gone", subjects.HeaderConnID: id, subjects.HeaderDataType: p.dataType,
			subjects.HeaderMsgID:  "dlq-" + strconv.FormatUint(p.seq, 10) + "-" + token,
			subjects.HeaderStatus: "410", subjects.HeaderAttempts: "1",
		}
		for k, v := range want {
			if got := m.Header.Get(k); got != v {
				t.Errorf("frame %d's dead letter: %s %q, want %q", p.seq, k, got, v)
			}
		}
		if m.Header.Get(subjects.HeaderError) == "" {
			t.Errorf("frame %d's dead letter says no Ws-Error", p.seq)
		}
		if m.Subject != names.DeadLetter(subjects.KindSend, token) {
			t.Errorf("frame %d's dead letter on %s, want %s", p.seq, m.Subject, names.DeadLetter(subjects.KindSend, token))
		}
		if !bytes.Equal(m.Data, p.data) {
			t.Errorf("frame %d's dead letter holds %d bytes %.12q…, want the %d bytes pushed %.12q…", p.seq, len(m.Data), m.Data, len(p.data), p.data)
		}
	}
	for seq := range byID {
		t.Errorf("dead letter of frame %d, which was not answered 200", seq)
	}
	return n
}

// TestDroppedFramesAreDeadLettered: a frame the gateway took (its push was
// answered 200, so the bridge counts it delivered) and then dropped unwritten
// is dead-lettered, once, as the bridge dead-letters a push that failed. (They
// were dropped without a trace: a chaos run counted every frame queued for
// a client that stalled as lost.)
func TestDroppedFramesAreDeadLettered(t *testing.T) {
	const size = 16 << 10
	serve := func(t *testing.T, tweak func(*Options)) (*served, jetstream.JetStream, subjects.Names) {
		t.Helper()
		s := natstest.Start(t)
		nc, js, names := provisioned(t, s)
		fn := &fakeFn{}
		srv := serveSmallBuffers(t, 8<<10, func(o *Options) {
			o.Register, o.Transfer, o.Cleanup = fn, fn, fn
			o.NATS, o.InstanceID, o.PushURL = nc, "edge-d", "http://127.0.0.1:1/push"
			o.PingInterval = -1
			tweak(o)
		})
		return srv, js, names
	}
	// readAll reads what the client holds until its connection ends.
	readAll := func(t *testing.T, c *websocket.Conn) map[uint64]bool {
		got := map[uint64]bool{}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			_, data, err := c.Read(ctx)
			timedOut := ctx.Err() != nil
			cancel()
			if err != nil {
				if timedOut {
					t.Fatalf("the client's connection still open after %v", waitTimeout)
				}
				return got
			}
			var seq uint64
			if _, err := fmt.Sscanf(string(data), "m%d ", &seq); err != nil {
				t.Fatalf("the client received %.20q", data)
			}
			got[seq] = true
		}
	}
	// waitDeadLetters waits until the frames dropped are all
	// dead-lettered.
	waitDeadLetters := func(t *testing.T, srv *served) {
		t.Helper()
		waitFor(t, "the dead letters of the frames dropped", func() bool {
			dropped := testutilValue(t, srv.g, "wsbridge_gateway_frames_dropped_total", `reason="slow"`) +
				testutilValue(t, srv.g, "wsbridge_gateway_frames_dropped_total", `reason="ended"`)
			return dropped > 0 && testutilValue(t, srv.g, "wsbridge_gateway_dead_letters_total") == dropped
		})
	}

	t.Run("the send queue overflows", func(t *testing.T) {
		t.Parallel()
		srv, js, names := serve(t, func(o *Options) {
			o.SendQueueMessages = 8
			// Long enough that the queue overflows before a write
			// stalls, on a loaded machine too.
			o.WriteTimeout = 3 * time.Second
		})
		c, id := nonReader(t, srv)
		var taken []pushed
		overflowed := false
		for seq := uint64(1); seq <= 2000 && !overflowed; seq++ {
			dataType, data := frameData(seq, size)
			switch st := pushSeq(t, srv.push, id, seq, dataType, data); st {
			case http.StatusOK:
				taken = append(taken, pushed{seq, dataType, data})
			case http.StatusGone:
				overflowed = true // the bridge dead-letters this one
			default:
				t.Fatalf("push %d: %d", seq, st)
			}
		}
		if !overflowed {
			t.Fatal("2000 frames to a client that does not read never overflowed its queue")
		}
		received := readAll(t, c)
		waitDeadLetters(t, srv)
		if n := checkDeadLetters(t, js, names, id, taken, received); n < 7 {
			t.Errorf("%d dead letters, want at least the 7 frames queued behind the one being written when the queue overflowed", n)
		}
	})

	t.Run("a write stalls", func(t *testing.T) {
		t.Parallel()
		srv, js, names := serve(t, func(o *Options) { o.WriteTimeout = 500 * time.Millisecond })
		c, id := nonReader(t, srv)
		var taken []pushed
		for seq := uint64(1); srv.g.Stats().SendQueueBytes < 4*size; seq++ {
			if seq > 2000 {
				t.Fatal("2000 frames to a client that does not read never queued")
			}
			dataType, data := frameData(seq, size)
			st := pushSeq(t, srv.push, id, seq, dataType, data)
			if st != http.StatusOK {
				break // it stalled already: the connection is gone
			}
			taken = append(taken, pushed{seq, dataType, data})
		}
		waitFor(t, "the stalled connection to end", func() bool { return len(srv.g.ConnectionIDs()) == 0 })
		received := readAll(t, c)
		waitDeadLetters(t, srv)
		if n := checkDeadLetters(t, js, names, id, taken, received); n < 3 {
			t.Errorf("%d dead letters, want at least the 3 frames queued behind the one that stalled", n)
		}
	})

	t.Run("the client leaves with frames queued", func(t *testing.T) {
		t.Parallel()
		srv, js, names := serve(t, func(o *Options) { o.WriteTimeout = time.Hour })
		c, id := nonReader(t, srv)
		var taken []pushed
		// Until frames wait behind the one being written.
		for seq := uint64(1); srv.g.Stats().SendQueueBytes < 4*size; seq++ {
			if seq > 2000 {
				t.Fatal("2000 frames to a client that does not read never queued")
			}
			dataType, data := frameData(seq, size)
			if st := pushSeq(t, srv.push, id, seq, dataType, data); st != http.StatusOK {
				t.Fatalf("push %d: %d", seq, st)
			}
			taken = append(taken, pushed{seq, dataType, data})
		}
		_ = c.CloseNow()
		waitFor(t, "the connection to end", func() bool { return len(srv.g.ConnectionIDs()) == 0 })
		waitDeadLetters(t, srv)
		// What the client's socket held is lost with the client; what
		// the gateway held is dead-lettered.
		received := map[uint64]bool{}
		for _, p := range taken {
			received[p.seq] = true
		}
		if n := checkDeadLetters(t, js, names, id, taken, received); n < 3 {
			t.Errorf("%d dead letters, want at least the 3 frames queued behind the one being written", n)
		}
	})

	t.Run("NATS refuses the whole dead letter", func(t *testing.T) {
		t.Parallel()
		for _, tt := range []struct {
			name    string
			maxSize int32 // of a WS_DLQ message, headers included
			taken   bool  // the metadata fits
		}{{"the metadata is taken", 2048, true}, {"nothing is taken", 64, false}} {
			t.Run(tt.name, func(t *testing.T) {
				srv, js, names := serve(t, func(o *Options) { o.WriteTimeout = time.Hour })
				ctx := context.Background()
				st, err := js.Stream(ctx, names.StreamDLQ())
				if err != nil {
					t.Fatal(err)
				}
				cfg := st.CachedInfo().Config
				cfg.MaxMsgSize = tt.maxSize
				if _, err := js.UpdateStream(ctx, cfg); err != nil {
					t.Fatal(err)
				}
				c, id := nonReader(t, srv)
				for seq := uint64(1); srv.g.Stats().SendQueueBytes < 4*size; seq++ {
					if seq > 2000 {
						t.Fatal("2000 frames to a client that does not read never queued")
					}
					dataType, data := frameData(seq, size)
					if st := pushSeq(t, srv.push, id, seq, dataType, data); st != http.StatusOK {
						t.Fatalf("push %d: %d", seq, st)
					}
				}
				_ = c.CloseNow()
				var dropped float64
				waitFor(t, "every dead letter taken or given up", func() bool {
					dropped = testutilValue(t, srv.g, "wsbridge_gateway_frames_dropped_total", `reason="ended"`)
					done := testutilValue(t, srv.g, "wsbridge_gateway_dead_letters_total") +
						testutilValue(t, srv.g, "wsbridge_gateway_retries_dropped_total", `what="dead_letter"`, `why="refused"`)
					return dropped > 0 && done == dropped
				})
				dls := deadLetters(t, js, names)
				if !tt.taken {
					if len(dls) != 0 {
						t.Errorf("%d dead letters stored in a stream that takes %d bytes", len(dls), tt.maxSize)
					}
					return
				}
				if len(dls) != int(dropped) {
					t.Fatalf("%d dead letters for %v frames dropped", len(dls), dropped)
				}
				for _, m := range dls {
					if len(m.Data) != 0 || m.Header.Get(subjects.HeaderTruncated) != strconv.Itoa(size) ||
						m.Header.Get(subjects.HeaderSeq) == "" || m.Header.Get(subjects.HeaderReason) != "gone" {
						t.Errorf("dead letter of the metadata alone: %d bytes, headers %v; want none, Ws-Truncated %d, Ws-Seq, Ws-Reason gone",
							len(m.Data), m.Header, size)
					}
				}
			})
		}
	})
}
