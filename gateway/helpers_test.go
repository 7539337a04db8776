package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/tencentyun/scf-go-lib/functioncontext"

	"github.com/wsbridge/wsbridge/subjects"
)

// waitTimeout bounds every wait for something asynchronous; a test that
// hits it fails with a message saying what never happened.
const waitTimeout = 10 * time.Second

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitFramesOut waits until g has counted n frames written: a connection's
// writer counts a frame once its write returned, which can be after the
// client read it.
func waitFramesOut(t *testing.T, g *Gateway, n uint64) {
	t.Helper()
	waitFor(t, strconv.FormatUint(n, 10)+" frames written to be counted", func() bool { return g.Stats().FramesOut >= n })
}

// call is one invocation the fake function saw.
type call struct {
	role        string // FunctionName from the function context
	requestID   string
	hasDeadline bool
	payload     string
	ws          subjects.GatewayWebSocket
}

// fakeFn is an in-process function serving all three roles, like the
// single websocket function; it records every event. The hooks decide the
// answers; nil hooks accept.
type fakeFn struct {
	mu    sync.Mutex
	calls []call

	register func(ws subjects.GatewayWebSocket) ([]byte, error)
	transfer func(ws subjects.GatewayWebSocket) error
	cleanup  func(ws subjects.GatewayWebSocket) error
}

func (f *fakeFn) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	var ev subjects.GatewayEvent
	if err := json.Unmarshal(payload, &ev); err != nil || ev.WebSocket == nil {
		return nil, errors.New("fake function: bad event " + string(payload))
	}
	c := call{payload: string(payload), ws: *ev.WebSocket}
	if fc, ok := functioncontext.FromContext(ctx); ok {
		c.role, c.requestID = fc.FunctionName, fc.RequestID
	}
	_, c.hasDeadline = ctx.Deadline()
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()

	ws := *ev.WebSocket
	switch ws.Action {
	case subjects.ActionConnecting:
		if f.register != nil {
			return f.register(ws)
		}
		return json.Marshal(subjects.GatewayReply{ErrMsg: "ok", WebSocket: &subjects.GatewayWebSocket{
			Action: ws.Action, SecConnectionID: ws.SecConnectionID, SecWebSocketProtocol: firstProtocol(ws.SecWebSocketProtocol),
		}})
	case subjects.ActionDataRecv:
		if f.transfer != nil {
			if err := f.transfer(ws); err != nil {
				return nil, err
			}
		}
	case subjects.ActionClosing:
		if f.cleanup != nil {
			if err := f.cleanup(ws); err != nil {
				return nil, err
			}
		}
	}
	return []byte(`{"errNo":0,"errMsg":"ok"}`), nil
}

// of returns the calls with the given action, in order.
func (f *fakeFn) of(action string) []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []call
	for _, c := range f.calls {
		if c.ws.Action == action {
			out = append(out, c)
		}
	}
	return out
}

// cleanups counts the cleanup invocations for one connection.
func (f *fakeFn) cleanups(id string) int {
	n := 0
	for _, c := range f.of(subjects.ActionClosing) {
		if c.ws.SecConnectionID == id {
			n++
		}
	}
	return n
}

// connID is the id of the only (or latest) registered connection.
func (f *fakeFn) connID(t testing.TB) string {
	t.Helper()
	reg := f.of(subjects.ActionConnecting)
	if len(reg) == 0 {
		t.Fatal("register was never invoked")
	}
	return reg[len(reg)-1].ws.SecConnectionID
}

type env struct {
	g   *Gateway
	srv *httptest.Server
	fn  *fakeFn
}

// newEnv serves a gateway whose three roles are one fake function.
func newEnv(t *testing.T, fn *fakeFn, tweak func(*Options)) *env {
	t.Helper()
	return newEnvWrapped(t, fn, tweak, nil)
}

// newEnvWrapped is newEnv with the gateway's handler wrapped, to watch
// requests arrive.
func newEnvWrapped(t *testing.T, fn *fakeFn, tweak func(*Options), wrap func(http.Handler) http.Handler) *env {
	t.Helper()
	if fn == nil {
		fn = &fakeFn{}
	}
	opts := Options{Register: fn, Transfer: fn, Cleanup: fn, FunctionTimeout: 5 * time.Second}
	if tweak != nil {
		tweak(&opts)
	}
	g, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h := g.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		srv.Close()
	})
	return &env{g: g, srv: srv, fn: fn}
}

func (e *env) wsURL() string { return "ws" + strings.TrimPrefix(e.srv.URL, "http") + DefaultWSPath }

func (e *env) dial(t *testing.T, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, e.wsURL(), opts)
	if err != nil {
		t.Fatalf("dial %s: %v", e.wsURL(), err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// push POSTs body to the reverse-push address and returns status and body.
func (e *env) push(t *testing.T, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(e.srv.URL+DefaultPushPath, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func pushBody(action, id, dataType, data string) string {
	var b bytes.Buffer
	_ = json.NewEncoder(&b).Encode(subjects.PushBody{WebSocket: subjects.GatewayWebSocket{
		Action: action, SecConnectionID: id, DataType: dataType, Data: data,
	}})
	return b.String()
}

// read reads one message within the wait bound.
func read(t *testing.T, c *websocket.Conn) (websocket.MessageType, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	typ, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, data
}

// closeStatus reads until the connection ends and returns the close code
// the gateway sent (-1 when it ended without one).
func closeStatus(t *testing.T, c *websocket.Conn) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("connection still open after %v", waitTimeout)
			}
			return websocket.CloseStatus(err)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
