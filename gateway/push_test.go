package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsbridge/wsbridge/subjects"
)

func TestPushDelivers(t *testing.T) {
	tests := []struct {
		name     string
		dataType string
		data     string
		wantType websocket.MessageType
		want     []byte
	}{
		{"text", "text", "hello ☺", websocket.MessageText, []byte("hello ☺")},
		{"empty text", "text", "", websocket.MessageText, []byte{}},
		{"binary", "binary", "AAEC+/8=", websocket.MessageBinary, []byte{0, 1, 2, 0xfb, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil, nil)
			c := e.dial(t, nil)
			id := e.fn.connID(t)
			status, body := e.push(t, pushBody("data send", id, tt.dataType, tt.data))
			if status != 200 || body != `{"errNo":0,"errMsg":"ok"}` {
				t.Fatalf("push: %d %s, want 200 {\"errNo\":0,\"errMsg\":\"ok\"}", status, body)
			}
			typ, data := read(t, c)
			if typ != tt.wantType || !bytes.Equal(data, tt.want) {
				t.Errorf("client got %v %q, want %v %q", typ, data, tt.wantType, tt.want)
			}
			waitFramesOut(t, e.g, 1)
			if s := e.g.Stats(); s.PushesOK != 1 || s.FramesOut != 1 {
				t.Errorf("stats PushesOK %d FramesOut %d, want 1 and 1", s.PushesOK, s.FramesOut)
			}
		})
	}
}

func TestPushOrderAndIsolation(t *testing.T) {
	e := newEnv(t, nil, nil)
	a := e.dial(t, nil)
	idA := e.fn.connID(t)
	b := e.dial(t, nil)
	idB := e.fn.connID(t)
	// b never reads: its pushes still succeed (the socket buffers absorb
	// them) and must not hold up a.
	for i := range 50 {
		for _, id := range []string{idA, idB} {
			if st, body := e.push(t, pushBody("data send", id, "text", strings.Repeat("x", i))); st != 200 {
				t.Fatalf("push %d to %s: %d %s", i, id, st, body)
			}
		}
	}
	for i := range 50 {
		if _, data := read(t, a); len(data) != i {
			t.Fatalf("message %d has %d bytes: pushes reordered", i, len(data))
		}
	}
	_ = b
}

func TestPushClose(t *testing.T) {
	e := newEnv(t, nil, nil)
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	if st, body := e.push(t, pushBody("closing", id, "", "")); st != 200 || body != `{"errNo":0,"errMsg":"ok"}` {
		t.Fatalf("push close: %d %s", st, body)
	}
	if got := closeStatus(t, c); got != websocket.StatusNormalClosure {
		t.Errorf("close status %v, want 1000", got)
	}
	waitFor(t, "cleanup after a push close", func() bool { return e.fn.cleanups(id) == 1 })
	st, body := e.push(t, pushBody("data send", id, "text", "late"))
	if st != 404 || body != `{"errNo":404,"errMsg":"connection not found"}` {
		t.Errorf("push after close: %d %s, want 404", st, body)
	}
}

func TestPushRefused(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.MaxMessageSize = 16 })
	e.dial(t, nil)
	id := e.fn.connID(t)
	idJSON, _ := json.Marshal(id)
	tests := []struct {
		name       string
		method     string
		body       string
		wantStatus int
		wantBody   string // exact when set
		wantMsg    string // substring of errMsg
	}{
		{name: "unknown connection", body: pushBody("data send", "bm9wZQ==", "text", "x"), wantStatus: 404,
			wantBody: `{"errNo":404,"errMsg":"connection not found"}`},
		{name: "unknown connection close", body: pushBody("closing", "bm9wZQ==", "", ""), wantStatus: 404,
			wantBody: `{"errNo":404,"errMsg":"connection not found"}`},
		{name: "GET", method: http.MethodGet, wantStatus: 405, wantMsg: "POST"},
		{name: "not JSON", body: "hello", wantStatus: 400, wantMsg: "malformed"},
		{name: "empty body", body: "", wantStatus: 400, wantMsg: "malformed"},
		{name: "no websocket", body: `{}`, wantStatus: 400, wantMsg: "secConnectionID"},
		{name: "unknown field", body: `{"websocket":{"action":"data send","secConnectionID":` + string(idJSON) + `,"dataType":"text","data":"x","extra":1}}`,
			wantStatus: 400, wantMsg: "extra"},
		{name: "trailing data", body: pushBody("data send", id, "text", "x") + "{}", wantStatus: 400, wantMsg: "after"},
		{name: "wrong action", body: pushBody("data recv", id, "text", "x"), wantStatus: 400, wantMsg: "action"},
		{name: "no dataType", body: pushBody("data send", id, "", "x"), wantStatus: 400, wantMsg: "dataType"},
		{name: "bad base64", body: pushBody("data send", id, "binary", "not base64!"), wantStatus: 400, wantMsg: "base64"},
		{name: "too large", body: pushBody("data send", id, "text", strings.Repeat("x", 17)), wantStatus: 413, wantMsg: "limit"},
		{name: "body too large", body: pushBody("data send", id, "text", strings.Repeat("x", 200<<10)), wantStatus: 413, wantMsg: "larger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			req, _ := http.NewRequestWithContext(context.Background(), method, e.srv.URL+DefaultPushPath, strings.NewReader(tt.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got subjects.GatewayReply
			var raw bytes.Buffer
			_, _ = raw.ReadFrom(resp.Body)
			if err := json.Unmarshal(raw.Bytes(), &got); err != nil {
				t.Fatalf("answer %q is not JSON: %v", raw.String(), err)
			}
			if resp.StatusCode != tt.wantStatus || got.ErrNo != tt.wantStatus {
				t.Errorf("status %d errNo %d, want %d and %d (%s)", resp.StatusCode, got.ErrNo, tt.wantStatus, tt.wantStatus, raw.String())
			}
			if tt.wantBody != "" && raw.String() != tt.wantBody {
				t.Errorf("body %s, want %s", raw.String(), tt.wantBody)
			}
			if !strings.Contains(got.ErrMsg, tt.wantMsg) {
				t.Errorf("errMsg %q, want it to mention %q", got.ErrMsg, tt.wantMsg)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
		})
	}
	if s := e.g.Stats(); s.PushesOK != 0 || s.PushesNotFound != 2 || s.PushesInvalid != uint64(len(tests)-2) {
		t.Errorf("stats %+v: want 2 not found and %d invalid", s, len(tests)-2)
	}
}

// TestSlowClient: a client whose socket stops taking frames is disconnected
// once a frame has waited WriteTimeout, as a client that does not read;
// its pushes are answered as they are queued meanwhile, and pushes to
// another client keep succeeding.
func TestSlowClient(t *testing.T) {
	const size = 256 << 10
	e := newEnv(t, nil, func(o *Options) {
		o.MaxMessageSize = size
		// The fast client's frames must never come near it: a write that
		// ends just as its deadline passes can still close the connection
		// (coder/websocket's timeout watcher), and the next push is a 404.
		// 300 ms did on a loaded machine.
		o.WriteTimeout = 3 * time.Second
		// Never full here: the stalled write is what ends the client.
		o.SendQueueBytes = 1 << 30
		o.SendQueueMessages = 1 << 20
	})
	fast := e.dial(t, nil)
	fastID := e.fn.connID(t)
	e.dial(t, nil) // slow: never reads
	slowID := e.fn.connID(t)

	stop := make(chan struct{})
	fastDone := make(chan error, 1)
	go func() {
		var n int
		defer func() { fastDone <- nil }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := http.Post(e.srv.URL+DefaultPushPath, "application/json",
				strings.NewReader(pushBody("data send", fastID, "text", "ping")))
			if err != nil {
				fastDone <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				fastDone <- fmt.Errorf("push %d to the fast client: status %d", n, resp.StatusCode)
				return
			}
			n++
		}
	}()
	go func() { // keep the fast client's socket drained
		for {
			if _, _, err := fast.Read(context.Background()); err != nil {
				return
			}
		}
	}()

	// 10 MiB: more than the socket buffers hold, so a write stalls. The
	// pushes are taken until the stall ends the client; after that the
	// connection is closed (410) or gone (404). The client's end is
	// counted as slow whichever of its reader and its writer sees it first.
	big := pushBody("data send", slowID, "text", strings.Repeat("x", size))
	ended := false
	for i := range 40 {
		st, body := e.push(t, big)
		switch {
		case st == http.StatusOK && !ended:
		case st == http.StatusGone || st == http.StatusNotFound:
			ended = true
		default:
			t.Fatalf("push %d to the slow client: %d %s (after the end: %v)", i, st, body, ended)
		}
	}
	waitFor(t, "cleanup of the slow client", func() bool { return e.fn.cleanups(slowID) == 1 })
	close(stop)
	if err := <-fastDone; err != nil {
		t.Errorf("fast client while the slow one stalled: %v", err)
	}
	waitFor(t, "the slow client's end counted as slow", func() bool {
		return testutil.ToFloat64(e.g.m.disconnects.WithLabelValues(discSlow)) == 1
	})
	if st, _ := e.push(t, big); st != http.StatusNotFound {
		t.Errorf("push after the slow client ended: %d, want 404", st)
	}
	waitFor(t, "the send queues empty", func() bool { return e.g.Stats().SendQueueBytes == 0 })
}

// TestCloseFollowsQueuedFrames: a close push waits for the frames queued
// before it, which the client then reads in full before the 1000; the
// connection takes no push after it.
func TestCloseFollowsQueuedFrames(t *testing.T) {
	const size, n = 128 << 10, 40 // 5 MiB: more than the socket buffers hold
	e := newEnv(t, nil, func(o *Options) {
		o.MaxMessageSize = size
		o.SendQueueBytes = 64 << 20
	})
	c := e.dial(t, nil)
	c.SetReadLimit(size)
	id := e.fn.connID(t)
	for i := range n {
		data := itoa(i) + ":" + strings.Repeat("x", size-len(itoa(i))-1)
		if st, body := e.push(t, pushBody("data send", id, "text", data)); st != 200 {
			t.Fatalf("push %d: %d %s", i, st, body)
		}
	}
	if st, body := e.push(t, pushBody("closing", id, "", "")); st != 200 {
		t.Fatalf("close: %d %s", st, body)
	}
	if st, _ := e.push(t, pushBody("data send", id, "text", "late")); st != http.StatusNotFound {
		t.Errorf("push after the close: %d, want 404", st)
	}
	for i := range n {
		_, data := read(t, c)
		if got, _, _ := strings.Cut(string(data), ":"); got != itoa(i) {
			t.Fatalf("message %d is %q…, want %d: a frame queued before the close was lost or reordered", i, data[:min(len(data), 12)], i)
		}
	}
	if got := closeStatus(t, c); got != websocket.StatusNormalClosure {
		t.Errorf("close status %v, want 1000 after the queued frames", got)
	}
	waitFor(t, "cleanup after the close", func() bool { return e.fn.cleanups(id) == 1 })
}

// TestPushDuringRegister answers the connect event before the upgrade is
// done, as a backend does when it welcomes a client: the push must wait for
// the connection rather than find nothing.
func TestPushDuringRegister(t *testing.T) {
	arrived := make(chan struct{}, 1)
	pushed := make(chan string, 1)
	var e *env
	fn := &fakeFn{register: func(ws subjects.GatewayWebSocket) ([]byte, error) {
		go func() {
			resp, err := http.Post(e.srv.URL+DefaultPushPath, "application/json",
				strings.NewReader(pushBody("data send", ws.SecConnectionID, "text", "welcome")))
			if err != nil {
				pushed <- err.Error()
				return
			}
			resp.Body.Close()
			pushed <- resp.Status
		}()
		select { // reply only once the push is at the gateway
		case <-arrived:
		case <-time.After(waitTimeout):
			return nil, errors.New("push never arrived")
		}
		return []byte(`{"errNo":0,"errMsg":"ok"}`), nil
	}}
	e = newEnvWrapped(t, fn, nil, func(inner http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == DefaultPushPath {
				arrived <- struct{}{}
			}
			inner.ServeHTTP(w, r)
		})
	})
	c := e.dial(t, nil)
	if _, data := read(t, c); string(data) != "welcome" {
		t.Errorf("first message %q, want the welcome pushed during register", data)
	}
	if got := <-pushed; got != "200 OK" {
		t.Errorf("push during register: %s, want 200 OK", got)
	}
}
