package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/stack"
)

// authorizer answers P.auth.connect like a business service. It reads the
// client's offered subprotocols: "deny" refuses, "u.NAME" sets the user,
// "g.NAME" adds a group; it picks the protocol "chat.v2" when offered, so a
// test can tell it from the client's first choice.
type authorizer struct {
	mu   sync.Mutex
	seen []subjects.ConnectEvent
}

func (s *service) authorize(t testing.TB) *authorizer {
	t.Helper()
	a := &authorizer{}
	sub, err := s.nc.Subscribe(s.names.AuthConnect(), func(m *nats.Msg) {
		var ce subjects.ConnectEvent
		if err := json.Unmarshal(m.Data, &ce); err != nil {
			_ = m.Respond([]byte(`{"allow":false,"errNo":400,"errMsg":"bad connect event"}`))
			return
		}
		a.mu.Lock()
		a.seen = append(a.seen, ce)
		a.mu.Unlock()
		reply := subjects.AuthReply{Allow: true}
		for _, p := range ce.Protocols {
			switch {
			case p == "deny":
				reply = subjects.AuthReply{Allow: false, ErrNo: 4003, ErrMsg: "not you"}
			case p == "chat.v2":
				reply.Protocol = p
			case strings.HasPrefix(p, "u."):
				reply.UserID = strings.TrimPrefix(p, "u.")
			case strings.HasPrefix(p, "g."):
				reply.Groups = append(reply.Groups, strings.TrimPrefix(p, "g."))
			}
		}
		if !reply.Allow {
			reply = subjects.AuthReply{Allow: false, ErrNo: 4003, ErrMsg: "not you"}
		}
		data, _ := json.Marshal(reply)
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatalf("subscribe %s: %v", s.names.AuthConnect(), err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := s.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return a
}

// asked returns the connect event the authorizer saw for the client that
// offered tag.
func (a *authorizer) asked(t testing.TB, tag string) subjects.ConnectEvent {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ce := range a.seen {
		if slices.Contains(ce.Protocols, tag) {
			return ce
		}
	}
	t.Fatalf("the authorizer was not asked about the client offering %q", tag)
	return subjects.ConnectEvent{}
}

// storedConnect reports whether WS_IN holds a connect event for token.
func (s *service) storedConnect(t testing.TB, token string) bool {
	t.Helper()
	ctx := s.ctx(t)
	str, err := s.c.JetStream().Stream(ctx, s.names.StreamIn())
	if err != nil {
		t.Fatalf("stream %s: %v", s.names.StreamIn(), err)
	}
	_, err = str.GetLastMsgForSubject(ctx, s.names.Connect(token))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false
	}
	if err != nil {
		t.Fatalf("stream %s: last message on %s: %v", s.names.StreamIn(), s.names.Connect(token), err)
	}
	return true
}

// TestConnectAuth connects under each authorization mode, with and without
// an authorizer, and checks what the client, the registry and the inbound
// stream see.
func TestConnectAuth(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		mode       functions.AuthMode
		authorizer bool
		offer      []string // subprotocols after the tag
		accept     bool
		protocol   string // chosen subprotocol the client must see ("" = the tag)
		user       string
		groups     []string
		status     int // HTTP status of a refused upgrade
	}{
		{name: "off", mode: functions.AuthOff, accept: true},
		{name: "off/first choice", mode: functions.AuthOff, offer: []string{"chat.v2"}, accept: true},
		{name: "required/allow", mode: functions.AuthRequired, authorizer: true,
			offer: []string{"chat.v1", "chat.v2", "u.alice", "g.red", "g.blue"}, accept: true,
			protocol: "chat.v2", user: "alice", groups: []string{"red", "blue"}},
		{name: "required/deny", mode: functions.AuthRequired, authorizer: true,
			offer: []string{"deny"}, status: http.StatusForbidden},
		{name: "required/no authorizer", mode: functions.AuthRequired, status: http.StatusServiceUnavailable},
		{name: "optional/no authorizer", mode: functions.AuthOptional, accept: true},
		{name: "optional/deny", mode: functions.AuthOptional, authorizer: true,
			offer: []string{"deny"}, status: http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := startStack(t, func(o *stack.Options) { o.Auth = tc.mode })
			svc := newService(t, st)
			rec := svc.record(t)
			var auth *authorizer
			if tc.authorizer {
				auth = svc.authorize(t)
			}
			tag := newTag()
			ws, resp, err := dialRaw(context.Background(), st, append([]string{tag}, tc.offer...)...)
			if !tc.accept {
				if err == nil {
					ws.CloseNow()
					t.Fatalf("dial succeeded (protocol %q), want it refused", ws.Subprotocol())
				}
				if resp == nil || resp.StatusCode != tc.status {
					t.Fatalf("dial error %v, response %v: want HTTP %d", err, resp, tc.status)
				}
				if auth == nil {
					// Without an authorizer the token is unknown: nothing
					// may be stored for any connection.
					if ids := st.Gateway.ConnectionIDs(); len(ids) != 0 {
						t.Errorf("gateway still holds connections %q", ids)
					}
					if evs := rec.find(isKind(subjects.KindConnect, "")); len(evs) != 0 {
						t.Errorf("connect events published for a refused client: %d", len(evs))
					}
					return
				}
				token := auth.asked(t, tag).Token
				if svc.storedConnect(t, token) {
					t.Errorf("WS_IN holds a connect event for refused %s", token)
				}
				if svc.registered(t, token) {
					t.Errorf("registry holds refused %s", token)
				}
				if evs := rec.find(isKind(subjects.KindConnect, token)); len(evs) != 0 {
					t.Errorf("connect event published for refused %s", token)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v (response %v)", err, resp)
			}
			c := wrap(t, ws, tag)
			want := tc.protocol
			if want == "" {
				want = tag
			}
			if got := ws.Subprotocol(); got != want {
				t.Errorf("client's subprotocol %q, want %q", got, want)
			}
			ev := rec.wait(t, "connect event", connectFor(tag))
			c.token = ev.Token
			if id, err := subjects.ConnID(ev.Token); err != nil || id != ev.ConnectionID || subjects.Token(id) != ev.Token {
				t.Errorf("connect event token %q and id %q do not match (%v)", ev.Token, ev.ConnectionID, err)
			}
			// The client can have its 101 a moment before the gateway
			// counts the connection open.
			waitFor(t, "the gateway to list connection "+ev.ConnectionID, func() bool {
				return slices.Contains(st.Gateway.ConnectionIDs(), ev.ConnectionID)
			})
			if ev.Connect.UserID != tc.user || !slices.Equal(ev.Connect.Groups, tc.groups) {
				t.Errorf("connect event user %q groups %q, want %q %q", ev.Connect.UserID, ev.Connect.Groups, tc.user, tc.groups)
			}
			if !svc.registered(t, c.token) {
				t.Errorf("registry has no record of %s", c.token)
			}
			got, err := svc.c.ConnGet(svc.ctx(t), c.token)
			if err != nil || got.Token != c.token || got.UserID != tc.user {
				t.Errorf("conn.get: %+v, %v; want token %s user %q", got, err, c.token, tc.user)
			}
		})
	}
}

// TestRoundTrip sends text and binary frames to a backend that echoes them
// through subjects.Client: client → transfer → P.in.message → backend →
// P.out.send → bridge → /push → client. Then /metrics counts the pushes.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	st := startStack(t, nil)
	svc := newService(t, st)
	rec := svc.record(t)
	svc.echo(t)
	c := dialKnown(t, st, rec)

	for i, tc := range []struct {
		name string
		typ  websocket.MessageType
		data []byte
	}{
		{"text", websocket.MessageText, []byte("hello")},
		{"text/unicode", websocket.MessageText, []byte("héllo, 世界 👋")},
		{"text/json", websocket.MessageText, []byte(`{"type":"chat","text":"a+b/c="}`)},
		{"binary", websocket.MessageBinary, []byte{0, 1, 2, 0xfe, 0xff, '\n', 0}},
		{"binary/large", websocket.MessageBinary, bytes.Repeat([]byte{0xa5, 0x00, 0x5a}, 10000)},
		{"text/large", websocket.MessageText, []byte(strings.Repeat("0123456789", 6000))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.write(t, tc.typ, tc.data)
			f := c.next(t, "the echo")
			if f.typ != tc.typ || !bytes.Equal(f.data, tc.data) {
				t.Fatalf("echo: got %v %d bytes %.40q, want %v %d bytes %.40q", f.typ, len(f.data), f.data, tc.typ, len(tc.data), tc.data)
			}
			// The echo and the recorder are two subscriptions: the echo
			// can arrive before the recorder has seen the event.
			var evs []subjects.Event
			waitFor(t, "the recorder to see the message event", func() bool {
				evs = rec.find(isKind(subjects.KindMessage, c.token))
				return len(evs) >= i+1
			})
			if len(evs) != i+1 {
				t.Fatalf("%d message events for %s, want %d", len(evs), c.token, i+1)
			}
			ev := evs[i]
			if ev.Binary != (tc.typ == websocket.MessageBinary) || !bytes.Equal(ev.Data, tc.data) {
				t.Errorf("P.in.message event: binary %v %d bytes, want binary %v %d bytes",
					ev.Binary, len(ev.Data), tc.typ == websocket.MessageBinary, len(tc.data))
			}
		})
	}

	// Every echo above was one successful send push.
	waitMetric(t, st.MetricsURL(), "wsbridge_pushes_total", `action="send",result="ok"`, 6)
	waitMetric(t, st.MetricsURL(), "wsbridge_inbound_events_total", `type="message"`, 6)
	if v, ok := metricValue(t, st.MetricsURL(), "wsbridge_push_duration_seconds_count", ""); !ok || v < 6 {
		t.Errorf("wsbridge_push_duration_seconds_count = %v (present %v), want at least 6", v, ok)
	}
}

// TestSingleFunctionBinary runs the same flow with the one websocket
// function binary serving all three roles.
func TestSingleFunctionBinary(t *testing.T) {
	t.Parallel()
	st := startStack(t, func(o *stack.Options) { o.Functions = filepath.Join(binDir, "websocket") })
	svc := newService(t, st)
	rec := svc.record(t)
	svc.echo(t)
	c := dialKnown(t, st, rec)
	c.write(t, websocket.MessageText, []byte("one function"))
	c.expectText(t, "one function")
	c.write(t, websocket.MessageBinary, []byte{9, 8, 7})
	if f := c.next(t, "binary echo"); f.typ != websocket.MessageBinary || !bytes.Equal(f.data, []byte{9, 8, 7}) {
		t.Fatalf("binary echo: got %v %v", f.typ, f.data)
	}
	if err := c.ws.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	ev := rec.wait(t, "disconnect event", isKind(subjects.KindDisconnect, c.token))
	if ev.Disconnect.Reason != subjects.ReasonClient {
		t.Errorf("disconnect reason %q, want %q", ev.Disconnect.Reason, subjects.ReasonClient)
	}
	waitFor(t, "the registry record to go", func() bool { return !svc.registered(t, c.token) })
}

// expectEach checks every client's next frames: want(i) lists them.
func expectEach(t *testing.T, cs []*client, want func(i int) []string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(cs))
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, w := range want(i) {
				select {
				case f := <-c.frames:
					if f.typ != websocket.MessageText || string(f.data) != w {
						errs[i] = fmt.Errorf("client %d: got %v %q, want %q", i, f.typ, f.data, w)
						return
					}
				case <-c.done:
					errs[i] = fmt.Errorf("client %d: ended (%v) before %q", i, c.err, w)
					return
				case <-timeAfter():
					errs[i] = fmt.Errorf("client %d: gave up after %v waiting for %q", i, waitTimeout, w)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// TestFanOut checks sends to one of 100 connections, broadcasts (with and
// without Ws-Exclude) and groups joined through P.api.group.add. "Nothing
// else arrived" is shown without waiting for silence: every step ends with
// a sentinel to all, and per-connection order means a stray frame would
// arrive before it.
func TestFanOut(t *testing.T) {
	t.Parallel()
	const n = 100
	st := startStack(t, nil)
	svc := newService(t, st)
	rec := svc.record(t)
	cs := dialMany(t, st, rec, n)
	svc.waitListed(t, subjects.ConnListRequest{}, n)
	ctx := svc.ctx(t)
	broadcast := func(t *testing.T, text string, opts ...subjects.SendOption) {
		t.Helper()
		if err := svc.c.Broadcast(ctx, []byte(text), opts...); err != nil {
			t.Fatalf("broadcast: %v", err)
		}
	}

	t.Run("send to one", func(t *testing.T) {
		const k = 37
		if err := svc.c.SendText(ctx, cs[k].token, "only for 37"); err != nil {
			t.Fatal(err)
		}
		broadcast(t, "sentinel-1")
		expectEach(t, cs, func(i int) []string {
			if i == k {
				return []string{"only for 37", "sentinel-1"}
			}
			return []string{"sentinel-1"}
		})
	})
	t.Run("broadcast", func(t *testing.T) {
		broadcast(t, "hello all")
		broadcast(t, "sentinel-2")
		expectEach(t, cs, func(int) []string { return []string{"hello all", "sentinel-2"} })
	})
	t.Run("broadcast excluding", func(t *testing.T) {
		broadcast(t, "not for 5 and 6", subjects.Exclude(cs[5].token, cs[6].token))
		broadcast(t, "sentinel-3")
		expectEach(t, cs, func(i int) []string {
			if i == 5 || i == 6 {
				return []string{"sentinel-3"}
			}
			return []string{"not for 5 and 6", "sentinel-3"}
		})
	})
	t.Run("group", func(t *testing.T) {
		members := func(i int) bool { return i%10 == 3 }
		for i, c := range cs {
			if !members(i) {
				continue
			}
			rec, err := svc.c.GroupAdd(svc.ctx(t), c.token, "blue")
			if err != nil || !slices.Contains(rec.Groups, "blue") {
				t.Fatalf("group.add reply %+v, %v: not in group blue", rec, err)
			}
		}
		// The bridge expands group sends from its index of the registry,
		// which follows the bucket asynchronously.
		svc.waitListed(t, subjects.ConnListRequest{Group: "blue"}, n/10)
		if err := svc.c.SendGroup(ctx, "blue", []byte("blue only")); err != nil {
			t.Fatal(err)
		}
		if err := svc.c.SendGroup(ctx, "blue", []byte("blue but 3"), subjects.Exclude(cs[3].token)); err != nil {
			t.Fatal(err)
		}
		if err := svc.c.SendGroup(ctx, "green", []byte("nobody")); err != nil {
			t.Fatal(err)
		}
		broadcast(t, "sentinel-4")
		expectEach(t, cs, func(i int) []string {
			switch {
			case i == 3:
				return []string{"blue only", "sentinel-4"}
			case members(i):
				return []string{"blue only", "blue but 3", "sentinel-4"}
			}
			return []string{"sentinel-4"}
		})
	})
}

// TestAuthIdentity checks user and group sends for identities given by the
// authorizer's reply.
func TestAuthIdentity(t *testing.T) {
	t.Parallel()
	st := startStack(t, func(o *stack.Options) { o.Auth = functions.AuthRequired })
	svc := newService(t, st)
	rec := svc.record(t)
	svc.authorize(t)
	offers := [][]string{
		{"u.alice", "g.red"},
		{"u.alice"},
		{"u.bob", "g.red", "g.green"},
		{}, // anonymous
	}
	cs := make([]*client, len(offers))
	for i, o := range offers {
		tag := newTag()
		cs[i] = dial(t, st, append([]string{tag}, o...)...)
		ev := rec.wait(t, "connect event of "+tag, connectFor(tag))
		cs[i].token = ev.Token
	}
	svc.waitListed(t, subjects.ConnListRequest{User: "alice"}, 2)
	svc.waitListed(t, subjects.ConnListRequest{Group: "red"}, 2)
	svc.waitListed(t, subjects.ConnListRequest{}, len(cs))
	if l := svc.connList(t, subjects.ConnListRequest{User: "alice", Group: "red"}); l.Total != 1 || l.Connections[0].Token != cs[0].token {
		t.Errorf("conn.list user alice in red: %+v, want only %s", l, cs[0].token)
	}
	ctx := svc.ctx(t)
	if err := svc.c.SendUser(ctx, "alice", []byte("to alice")); err != nil {
		t.Fatal(err)
	}
	if err := svc.c.SendGroup(ctx, "red", []byte("to red")); err != nil {
		t.Fatal(err)
	}
	if err := svc.c.SendUser(ctx, "bob", []byte("to bob"), subjects.Binary()); err != nil {
		t.Fatal(err)
	}
	if err := svc.c.SendGroup(ctx, "green", []byte("to green")); err != nil {
		t.Fatal(err)
	}
	if err := svc.c.Broadcast(ctx, []byte("sentinel")); err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"to alice", "to red", "sentinel"},
		{"to alice", "sentinel"},
		{"to red", "to bob", "to green", "sentinel"},
		{"sentinel"},
	}
	for i, c := range cs {
		for _, w := range want[i] {
			f := c.next(t, fmt.Sprintf("%q", w))
			wantTyp := websocket.MessageText
			if w == "to bob" {
				wantTyp = websocket.MessageBinary
			}
			if f.typ != wantTyp || string(f.data) != w {
				t.Fatalf("client %d (%v): got %v %q, want %v %q", i, offers[i], f.typ, f.data, wantTyp, w)
			}
		}
	}
}

// TestCloseFromBackend closes a connection through P.out.close.T.
func TestCloseFromBackend(t *testing.T) {
	t.Parallel()
	st := startStack(t, nil)
	svc := newService(t, st)
	rec := svc.record(t)
	c := dialKnown(t, st, rec)
	other := dialKnown(t, st, rec)
	if !svc.registered(t, c.token) {
		t.Fatalf("registry has no record of %s", c.token)
	}
	if err := svc.c.Close(svc.ctx(t), c.token); err != nil {
		t.Fatalf("close: %v", err)
	}
	err := c.closed(t)
	if code := websocket.CloseStatus(err); code == -1 {
		t.Errorf("client's connection ended without a close frame: %v", err)
	} else {
		t.Logf("client saw close %d (%v)", code, err)
	}
	ev := rec.wait(t, "disconnect event with reason closed", func(ev subjects.Event) bool {
		return ev.Kind == subjects.KindDisconnect && ev.Token == c.token && ev.Disconnect.Reason == subjects.ReasonClosed
	})
	if ev.ConnectionID == "" || ev.Disconnect.At.IsZero() {
		t.Errorf("disconnect event %+v: want connectionId and at", ev.Disconnect)
	}
	waitFor(t, "the registry record to go", func() bool { return !svc.registered(t, c.token) })
	svc.waitListed(t, subjects.ConnListRequest{}, 1)
	// One event (issue 7, item 10): once both announcers are done (the
	// gateway's cleanup invocation returned, the bridge acknowledged the
	// close), a subscriber has seen exactly one, with the true reason.
	waitFor(t, "the cleanup invocation", func() bool { return st.Gateway.Stats().Cleanups >= 1 })
	js, err := jetstream.New(svc.nc)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the close resolved", func() bool {
		n, err := subjects.Unresolved(svc.ctx(t), js, svc.names)
		return err == nil && n == 0
	})
	if err := svc.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if evs := rec.find(isKind(subjects.KindDisconnect, c.token)); len(evs) != 1 {
		t.Errorf("%d disconnect events for the closed connection, want 1: %+v", len(evs), evs)
	}
	for _, ev := range rec.find(isKind(subjects.KindDisconnect, "")) {
		if ev.Token != c.token {
			t.Errorf("disconnect event for %s, which was not closed", ev.Token)
		}
	}
	// The other connection is untouched.
	if err := svc.c.SendText(svc.ctx(t), other.token, "still here"); err != nil {
		t.Fatal(err)
	}
	other.expectText(t, "still here")
}

// TestClientDisconnect closes from the client side.
func TestClientDisconnect(t *testing.T) {
	t.Parallel()
	st := startStack(t, nil)
	svc := newService(t, st)
	rec := svc.record(t)
	c := dialKnown(t, st, rec)
	if err := c.ws.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	ev := rec.wait(t, "disconnect event", isKind(subjects.KindDisconnect, c.token))
	if ev.Disconnect.Reason != subjects.ReasonClient || ev.ConnectionID == "" {
		t.Errorf("disconnect event %+v, want reason %q", ev.Disconnect, subjects.ReasonClient)
	}
	// The cleanup function stores the event, then deletes the record.
	waitFor(t, "the record deleted after the disconnect event", func() bool { return !svc.registered(t, c.token) })
	svc.waitListed(t, subjects.ConnListRequest{}, 0)
	if rec, err := svc.c.ConnGet(svc.ctx(t), c.token); !errors.Is(err, subjects.ErrNotFound) {
		t.Errorf("conn.get of a disconnected token: %+v, %v; want ErrNotFound", rec, err)
	}
}

// TestOrderPerConnection publishes 200 messages to each of 10 connections,
// the connections in parallel, and checks each arrives in publish order.
func TestOrderPerConnection(t *testing.T) {
	t.Parallel()
	const conns, msgs = 10, 200
	st := startStack(t, nil)
	svc := newService(t, st)
	rec := svc.record(t)
	cs := dialMany(t, st, rec, conns)
	ctx := svc.ctx(t)
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range msgs {
				if err := svc.c.SendText(ctx, c.token, strconv.Itoa(j)); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
	expectEach(t, cs, func(int) []string {
		want := make([]string, msgs)
		for j := range want {
			want[j] = strconv.Itoa(j)
		}
		return want
	})
}

// TestPushToGoneConnection publishes to the token of a closed connection:
// the gateway answers 404 and the bridge dead-letters the message on
// P.dlq.send.T; the cleanup already announced the disconnect, so no second
// one follows. A connection whose cleanup was lost (its record still in the
// registry) is announced gone, once, and leaves the registry.
func TestPushToGoneConnection(t *testing.T) {
	t.Parallel()
	st := startStack(t, nil)
	svc := newService(t, st)
	rec := svc.record(t)
	c := dialKnown(t, st, rec)
	if err := c.ws.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "client disconnect", isKind(subjects.KindDisconnect, c.token))

	dlq := make(chan *nats.Msg, 4)
	sub, err := svc.nc.ChanSubscribe(svc.names.DeadLetter(subjects.KindSend, c.token), dlq)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := svc.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := svc.c.SendText(svc.ctx(t), c.token, "too late"); err != nil {
		t.Fatal(err)
	}
	var m *nats.Msg
	select {
	case m = <-dlq:
	case <-timeAfter():
		t.Fatalf("no dead letter on %s after %v", svc.names.DeadLetter(subjects.KindSend, c.token), waitTimeout)
	}
	if string(m.Data) != "too late" {
		t.Errorf("dead letter body %q, want the original", m.Data)
	}
	h := m.Header
	if h.Get(subjects.HeaderStatus) != "404" || h.Get(subjects.HeaderReason) != "gone" || h.Get(subjects.HeaderError) == "" ||
		h.Get(subjects.HeaderAttempts) != "1" || h.Get(subjects.HeaderSubject) != svc.names.Send(c.token) {
		t.Errorf("dead letter headers %v: want status 404, reason gone, an error, 1 attempt, the original subject", h)
	}

	// A connection the gateway lost without a cleanup: its record stays.
	staleID := "lost-cleanup-0000000000000=="
	stale := subjects.Token(staleID)
	kv, err := svc.c.JetStream().KeyValue(svc.ctx(t), svc.names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	rec0, _ := json.Marshal(subjects.ConnectEvent{ConnectionID: staleID, Token: stale, ConnectedAt: time.Now().UTC()})
	if _, err := kv.Put(svc.ctx(t), stale, rec0); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, st.MetricsURL(), "wsbridge_registry_connections", "", 1) // the bridge indexed it
	for i := 0; i < 3; i++ {
		if err := svc.c.SendText(svc.ctx(t), stale, "to nobody"); err != nil {
			t.Fatal(err)
		}
	}
	ev := rec.wait(t, "disconnect event with reason gone", func(ev subjects.Event) bool {
		return ev.Kind == subjects.KindDisconnect && ev.Token == stale && ev.Disconnect.Reason == subjects.ReasonGone
	})
	if ev.ConnectionID != staleID {
		t.Errorf("gone event for connection %q, want %q", ev.ConnectionID, staleID)
	}
	waitFor(t, "the lost connection's record to be deleted", func() bool { return !svc.registered(t, stale) })
	waitMetric(t, st.MetricsURL(), "wsbridge_dead_letters_total", `reason="gone"`, 4)
	if evs := rec.find(isKind(subjects.KindDisconnect, stale)); len(evs) != 1 {
		t.Errorf("%d disconnect events for the lost connection, want 1 (three sends, each dead-lettered gone)", len(evs))
	}
	if evs := rec.find(isKind(subjects.KindDisconnect, c.token)); len(evs) != 1 {
		t.Errorf("%d disconnect events for the closed connection, want only the cleanup's", len(evs))
	}
	// One push to each gone connection: the bridge dead-letters the rest
	// of a connection's backlog once it was answered gone.
	waitMetric(t, st.MetricsURL(), "wsbridge_pushes_total", `action="send",result="gone"`, 2)
	if v, _ := metricValue(t, st.MetricsURL(), "wsbridge_pushes_total", `action="send",result="gone"`); v != 2 {
		t.Errorf("%v pushes answered gone, want 2: one for each gone connection", v)
	}
}
