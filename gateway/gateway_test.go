package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

func TestConnectingEvent(t *testing.T) {
	tests := []struct {
		name   string
		opts   *websocket.DialOptions
		wantWS map[string]any // websocket object minus secConnectionID
	}{
		{"plain", nil, map[string]any{"action": "connecting"}},
		{
			"protocols",
			&websocket.DialOptions{Subprotocols: []string{"chat.v2", "chat.v1"}},
			map[string]any{"action": "connecting", "secWebSocketProtocol": "chat.v2,chat.v1"},
		},
		{
			"extensions",
			&websocket.DialOptions{HTTPHeader: http.Header{"Sec-Websocket-Extensions": {"x-foo; a=1, x-bar"}}},
			map[string]any{"action": "connecting", "secWebSocketExtensions": "x-foo; a=1,x-bar"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil, func(o *Options) { o.ServiceID, o.Stage = "service-abc", "test" })
			e.dial(t, tt.opts)
			reg := e.fn.of(subjects.ActionConnecting)
			if len(reg) != 1 {
				t.Fatalf("register invoked %d times, want 1", len(reg))
			}
			var got struct {
				RequestContext map[string]any `json:"requestContext"`
				WebSocket      map[string]any `json:"websocket"`
			}
			if err := json.Unmarshal([]byte(reg[0].payload), &got); err != nil {
				t.Fatalf("connecting event %s: %v", reg[0].payload, err)
			}
			rid, _ := got.RequestContext["requestId"].(string)
			if rid == "" {
				t.Errorf("requestContext.requestId is empty in %s", reg[0].payload)
			}
			wantRC := map[string]any{
				"serviceId": "service-abc", "path": "/ws", "httpMethod": "GET", "requestId": rid,
				"identity": map[string]any{}, "sourceIp": "127.0.0.1", "stage": "test", "websocketEnable": true,
			}
			if !reflect.DeepEqual(got.RequestContext, wantRC) {
				t.Errorf("requestContext = %v, want %v", got.RequestContext, wantRC)
			}
			id, _ := got.WebSocket["secConnectionID"].(string)
			delete(got.WebSocket, "secConnectionID")
			if !reflect.DeepEqual(got.WebSocket, tt.wantWS) {
				t.Errorf("websocket = %v, want %v", got.WebSocket, tt.wantWS)
			}
			if b, err := base64.StdEncoding.DecodeString(id); err != nil || len(b) != 16 {
				t.Errorf("secConnectionID %q: want standard base64 of 16 bytes (err %v)", id, err)
			}
			if !reg[0].hasDeadline || reg[0].requestID == "" || reg[0].role != "register" {
				t.Errorf("invocation context: deadline %v, request id %q, function %q; want a deadline, an id and register",
					reg[0].hasDeadline, reg[0].requestID, reg[0].role)
			}
		})
	}
}

func TestConnIDShape(t *testing.T) {
	seen := map[string]bool{}
	special := false
	for range 500 {
		id := newConnID()
		b, err := base64.StdEncoding.Strict().DecodeString(id)
		if err != nil || len(b) != 16 {
			t.Fatalf("id %q: want standard base64 of 16 bytes (err %v)", id, err)
		}
		if seen[id] {
			t.Fatalf("id %q generated twice", id)
		}
		seen[id] = true
		special = special || strings.ContainsAny(id, "+/")
	}
	if !special {
		t.Error("500 ids and none has + or /: not the gateway's alphabet")
	}
}

func TestRegisterReply(t *testing.T) {
	reply := func(errNo int, msg, proto string) func(subjects.GatewayWebSocket) ([]byte, error) {
		return func(ws subjects.GatewayWebSocket) ([]byte, error) {
			return json.Marshal(subjects.GatewayReply{ErrNo: errNo, ErrMsg: msg, WebSocket: &subjects.GatewayWebSocket{
				Action: ws.Action, SecConnectionID: ws.SecConnectionID, SecWebSocketProtocol: proto,
			}})
		}
	}
	tests := []struct {
		name       string
		register   func(subjects.GatewayWebSocket) ([]byte, error)
		protocols  []string
		wantStatus int    // 0: accepted
		wantBody   string // for rejections, when exact
		wantProto  string
		// wantCleanup: the register failed on the server's side, so the
		// record it may have stored is cleaned up; a refusal is not.
		wantCleanup bool
	}{
		{name: "accept", register: reply(0, "ok", "")},
		{name: "accept chooses one protocol", register: reply(0, "ok", "b"), protocols: []string{"a", "b"}, wantProto: "b"},
		{name: "accept echoing the list takes the first", register: reply(0, "ok", "a,b"), protocols: []string{"a", "b"}, wantProto: "a"},
		{name: "accept without websocket object", register: func(subjects.GatewayWebSocket) ([]byte, error) {
			return []byte(`{"errNo":0,"errMsg":"ok"}`), nil
		}},
		{name: "reject by errNo", register: reply(4001, "not allowed", ""), wantStatus: 403, wantBody: `{"errNo":4001,"errMsg":"not allowed"}`},
		{name: "errNo of the server's fault", register: reply(503, "NATS unavailable", ""), wantStatus: 503,
			wantBody: `{"errNo":503,"errMsg":"NATS unavailable"}`, wantCleanup: true},
		{name: "failed invocation", register: func(subjects.GatewayWebSocket) ([]byte, error) {
			return nil, errors.New("boom")
		}, wantStatus: 502, wantCleanup: true},
		{name: "reply not JSON", register: func(subjects.GatewayWebSocket) ([]byte, error) {
			return []byte("ok"), nil
		}, wantStatus: 502, wantCleanup: true},
		{name: "panicking function", register: func(subjects.GatewayWebSocket) ([]byte, error) {
			panic("bug in the function")
		}, wantStatus: 502, wantCleanup: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, &fakeFn{register: tt.register}, nil)
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, e.wsURL(), &websocket.DialOptions{Subprotocols: tt.protocols})
			if tt.wantStatus == 0 {
				if err != nil {
					t.Fatalf("dial: %v, want accepted", err)
				}
				defer c.CloseNow()
				if got := c.Subprotocol(); got != tt.wantProto {
					t.Errorf("subprotocol %q, want %q", got, tt.wantProto)
				}
				return
			}
			if err == nil {
				c.CloseNow()
				t.Fatal("dial succeeded, want rejected")
			}
			if resp == nil {
				t.Fatalf("dial error %v and no response", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d (body %s)", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("body %s, want %s", body, tt.wantBody)
			}
			if tt.wantCleanup {
				waitFor(t, "cleanup of the failed registration", func() bool { return len(e.fn.of(subjects.ActionClosing)) > 0 })
				if id := e.fn.connID(t); e.fn.cleanups(id) != 1 {
					t.Errorf("cleanup invoked %d times for %s, want once", e.fn.cleanups(id), id)
				}
			} else if n := len(e.fn.of(subjects.ActionClosing)); n != 0 {
				t.Errorf("cleanup invoked %d times for a refused connection, want 0", n)
			}
			if s := e.g.Stats(); s.ConnectionsRejected != 1 || s.ConnectionsTotal != 0 {
				t.Errorf("stats rejected %d total %d, want 1 and 0", s.ConnectionsRejected, s.ConnectionsTotal)
			}
		})
	}
}

func TestNotAnUpgrade(t *testing.T) {
	e := newEnv(t, nil, nil)
	resp, err := http.Get(e.srv.URL + DefaultWSPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("plain GET: status %d, want 426", resp.StatusCode)
	}
	if n := len(e.fn.of(subjects.ActionConnecting)); n != 0 {
		t.Errorf("register invoked %d times for a plain GET, want 0", n)
	}
}

func TestFrames(t *testing.T) {
	e := newEnv(t, nil, nil)
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	ctx := context.Background()

	frames := []struct {
		typ  websocket.MessageType
		data []byte
		want string
	}{
		{websocket.MessageText, []byte("hello"), `{"websocket":{"action":"data recv","secConnectionID":%q,"dataType":"text","data":"hello"}}`},
		{websocket.MessageText, nil, `{"websocket":{"action":"data recv","secConnectionID":%q,"dataType":"text","data":""}}`},
		{websocket.MessageText, []byte(`{"q":"<&>"}`), `{"websocket":{"action":"data recv","secConnectionID":%q,"dataType":"text","data":"{\"q\":\"\u003c\u0026\u003e\"}"}}`},
		{websocket.MessageBinary, []byte{0, 1, 2, 0xfb, 0xff}, `{"websocket":{"action":"data recv","secConnectionID":%q,"dataType":"binary","data":"AAEC+/8="}}`},
	}
	for _, f := range frames {
		if err := c.Write(ctx, f.typ, f.data); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	const ordered = 200
	for i := range ordered {
		if err := c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	waitFor(t, "every frame to reach the transfer function", func() bool {
		return len(e.fn.of(subjects.ActionDataRecv)) == len(frames)+ordered
	})
	got := e.fn.of(subjects.ActionDataRecv)
	for i, f := range frames {
		if want := fmt.Sprintf(f.want, id); got[i].payload != want {
			t.Errorf("frame %d event\n got %s\nwant %s", i, got[i].payload, want)
		}
		if got[i].role != "transfer" || !got[i].hasDeadline {
			t.Errorf("frame %d invoked %q (deadline %v), want transfer with a deadline", i, got[i].role, got[i].hasDeadline)
		}
	}
	for i, c := range got[len(frames):] {
		if c.ws.Data != strconv.Itoa(i) {
			t.Fatalf("frame %d reached transfer as %q: out of order", i, c.ws.Data)
		}
	}
	if s := e.g.Stats(); s.FramesIn != uint64(len(frames)+ordered) {
		t.Errorf("FramesIn %d, want %d", s.FramesIn, len(frames)+ordered)
	}
}

func TestTransferFailureClosesClient(t *testing.T) {
	fn := &fakeFn{transfer: func(ws subjects.GatewayWebSocket) error {
		if ws.Data == "fail" {
			return errors.New("function crashed")
		}
		return nil
	}}
	e := newEnv(t, fn, nil)
	c := e.dial(t, nil)
	id := fn.connID(t)
	if err := c.Write(context.Background(), websocket.MessageText, []byte("fail")); err != nil {
		t.Fatal(err)
	}
	if got := closeStatus(t, c); got != websocket.StatusInternalError {
		t.Errorf("close status %v, want %v", got, websocket.StatusInternalError)
	}
	waitFor(t, "cleanup after a failed transfer", func() bool { return fn.cleanups(id) == 1 })
}

func TestMaxMessageSize(t *testing.T) {
	const limit = 1024
	e := newEnv(t, nil, func(o *Options) { o.MaxMessageSize = limit })
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	ctx := context.Background()
	if err := c.Write(ctx, websocket.MessageBinary, make([]byte, limit)); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, websocket.MessageBinary, make([]byte, limit+1)); err != nil {
		t.Fatal(err)
	}
	if got := closeStatus(t, c); got != websocket.StatusMessageTooBig {
		t.Errorf("close status %v, want %v", got, websocket.StatusMessageTooBig)
	}
	waitFor(t, "cleanup after an oversized frame", func() bool { return e.fn.cleanups(id) == 1 })
	if n := len(e.fn.of(subjects.ActionDataRecv)); n != 1 {
		t.Errorf("transfer invoked %d times, want 1 (the frame at the limit only)", n)
	}
}

func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.IdleTimeout = 100 * time.Millisecond })
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	if got := closeStatus(t, c); got != websocket.StatusGoingAway {
		t.Errorf("close status %v, want %v", got, websocket.StatusGoingAway)
	}
	waitFor(t, "cleanup of the idle connection", func() bool { return e.fn.cleanups(id) == 1 })
}

func TestMaxConnections(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.MaxConnections = 2 })
	first := e.dial(t, nil)
	e.dial(t, nil)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, e.wsURL(), nil)
	if err == nil {
		c.CloseNow()
		t.Fatal("third connection accepted, want 503")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third connection: %v (response %v), want 503", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if want := `{"errNo":503,"errMsg":"too many connections"}`; string(body) != want {
		t.Errorf("body %s, want %s", body, want)
	}
	if n := len(e.fn.of(subjects.ActionConnecting)); n != 2 {
		t.Errorf("register invoked %d times, want 2 (not for the refused one)", n)
	}

	first.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "the first connection to be cleaned up", func() bool { return e.g.Stats().ConnectionsOpen == 1 })
	waitFor(t, "its slot to be released", func() bool { return e.g.slots.Load() == 1 })
	e.dial(t, nil)
}

// TestCleanupExactlyOnce ends connections every way there is, some racing
// each other, and counts cleanup invocations.
func TestCleanupExactlyOnce(t *testing.T) {
	ends := []struct {
		name string
		end  func(t *testing.T, e *env, c *websocket.Conn, id string)
	}{
		{"client closes", func(t *testing.T, e *env, c *websocket.Conn, id string) {
			c.Close(websocket.StatusNormalClosure, "bye")
		}},
		{"client drops", func(t *testing.T, e *env, c *websocket.Conn, id string) {
			c.CloseNow()
		}},
		{"push close", func(t *testing.T, e *env, c *websocket.Conn, id string) {
			if st, body := e.push(t, pushBody("closing", id, "", "")); st != 200 {
				t.Fatalf("push close: %d %s", st, body)
			}
			if got := closeStatus(t, c); got != websocket.StatusNormalClosure {
				t.Errorf("close status %v, want 1000", got)
			}
		}},
		{"push close racing client close", func(t *testing.T, e *env, c *websocket.Conn, id string) {
			go c.Close(websocket.StatusNormalClosure, "bye")
			e.push(t, pushBody("closing", id, "", ""))
		}},
		{"gateway closes", func(t *testing.T, e *env, c *websocket.Conn, id string) {
			go func() { _, _, _ = c.Read(context.Background()) }() // answer the close handshake
			if err := e.g.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if n := e.fn.cleanups(id); n != 1 {
				t.Errorf("after Close returned: %d cleanups, want 1", n)
			}
		}},
	}
	for _, tt := range ends {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil, nil)
			c := e.dial(t, nil)
			id := e.fn.connID(t)
			tt.end(t, e, c, id)
			waitFor(t, "cleanup", func() bool { return e.g.Stats().ConnectionsOpen == 0 && e.fn.cleanups(id) >= 1 })
			e.g.Close() // a second close must not clean up again
			if n := e.fn.cleanups(id); n != 1 {
				t.Errorf("cleanup invoked %d times, want exactly 1", n)
			}
			if s := e.g.Stats(); s.Cleanups != 1 {
				t.Errorf("Stats.Cleanups %d, want 1", s.Cleanups)
			}
		})
	}
}

func TestFailedCleanupIsSurvived(t *testing.T) {
	fn := &fakeFn{cleanup: func(subjects.GatewayWebSocket) error { return errors.New("nats down") }}
	e := newEnv(t, fn, nil)
	c := e.dial(t, nil)
	id := fn.connID(t)
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "the failed cleanup", func() bool { return fn.cleanups(id) == 1 })
	waitFor(t, "the failure to be counted", func() bool { return e.g.Stats().InvokeErrors == 1 })
	e.dial(t, nil) // still serving
}

func TestServeAndClose(t *testing.T) {
	fn := &fakeFn{}
	g, err := New(Options{Register: fn, Transfer: fn, Cleanup: fn,
		Fallback: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "page") })})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx, ln) }()

	base := "http://" + ln.Addr().String()
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(page) != "page" {
		t.Errorf("GET / = %q, want the fallback's page", page)
	}

	dctx, dcancel := context.WithTimeout(context.Background(), waitTimeout)
	defer dcancel()
	c, _, err := websocket.Dial(dctx, "ws://"+ln.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	id := fn.connID(t)
	statusc := make(chan websocket.StatusCode, 1)
	go func() { statusc <- closeStatus(t, c) }()

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve returned %v, want nil after cancel", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return after its context was cancelled")
	}
	if got := <-statusc; got != websocket.StatusGoingAway {
		t.Errorf("client saw close %v, want %v", got, websocket.StatusGoingAway)
	}
	if n := fn.cleanups(id); n != 1 {
		t.Errorf("cleanups after shutdown: %d, want 1", n)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// edgeConn stands for a NATS connection in option checks, which never use it.
var edgeConn = new(nats.Conn)

func TestOptionsValidate(t *testing.T) {
	fn := &fakeFn{}
	ok := Options{Register: fn, Transfer: fn, Cleanup: fn}
	tests := []struct {
		name    string
		tweak   func(*Options)
		wantErr string
	}{
		{"defaults", func(*Options) {}, ""},
		{"no invokers", func(o *Options) { o.Register, o.Cleanup = nil, nil }, "no Register invoker"},
		{"relative path", func(o *Options) { o.WSPath = "ws" }, "WSPath"},
		{"same paths", func(o *Options) { o.PushPath = "/ws" }, "both"},
		{"negative timeout", func(o *Options) { o.IdleTimeout = -time.Second }, "IdleTimeout"},
		{"negative limit", func(o *Options) { o.MaxConnections = -1 }, "MaxConnections"},
		{"negative per-IP limit", func(o *Options) { o.MaxConnectionsPerIP = -1 }, "MaxConnectionsPerIP"},
		{"negative send queue bytes", func(o *Options) { o.SendQueueBytes = -1 }, "--send-queue-bytes"},
		{"negative send queue messages", func(o *Options) { o.SendQueueMessages = -1 }, "--send-queue-messages"},
		{"tls cert alone", func(o *Options) { o.TLSCert = "c.pem" }, "--tls-cert and --tls-key"},
		{"push token with a space", func(o *Options) { o.PushToken = "a b" }, "push token"},
		{"bad origin", func(o *Options) { o.AllowedOrigins = []string{"app.example.com"} }, "allowed origin"},
		{"edge without instance id", func(o *Options) { o.NATS, o.PushURL = edgeConn, "http://10.0.0.1:9090/push" }, "--instance-id"},
		{"edge without push url", func(o *Options) { o.NATS, o.InstanceID = edgeConn, "a" }, "--push-url"},
		{"instance ttl at the limit", func(o *Options) {
			o.NATS, o.InstanceID, o.PushURL, o.InstanceTTL = edgeConn, "a", "http://10.0.0.1:9090/push", MaxInstanceTTL
		}, ""},
		{"instance ttl past the limit", func(o *Options) {
			o.NATS, o.InstanceID, o.PushURL, o.InstanceTTL = edgeConn, "a", "http://10.0.0.1:9090/push", MaxInstanceTTL+time.Second
		}, "--instance-ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.tweak(&o)
			err := o.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate: %v, want an error mentioning %q", err, tt.wantErr)
			}
			if _, nerr := New(o); nerr == nil {
				t.Error("New accepted options Validate refuses")
			}
		})
	}
	if d := DefaultOptions(); d.WSPath != "/ws" || d.PushPath != "/push" || d.MaxConnections != DefaultMaxConnections {
		t.Errorf("DefaultOptions = %+v", d)
	}
}

func TestClosedGatewayRefuses(t *testing.T) {
	e := newEnv(t, nil, nil)
	if err := e.g.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, e.wsURL(), nil)
	if err == nil {
		c.CloseNow()
		t.Fatal("closed gateway accepted a connection")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Close: %v, want 503", err)
	}
	if n := len(e.fn.of(subjects.ActionConnecting)); n != 0 {
		t.Errorf("register invoked %d times after Close, want 0", n)
	}
}
