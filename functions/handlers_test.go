package functions_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

func TestRegisterAccepts(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	f := newFunctions(t, s.ClientURL(), nil)
	tests := []struct {
		name, id, protocols string
		wantProtocol        string
		wantProtocols       []string
	}{
		{"no protocol", "id-1", "", "", []string{}},
		{"one protocol", "id-2", "chat", "chat", []string{"chat"}},
		{"first of several", "id-3", " chat.v2 , chat ", "chat.v2", []string{"chat.v2", "chat"}},
		{"gateway-like id", connID, "a,b", "a", []string{"a", "b"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reqID := "req-" + tt.id
			out, err := f.Register(invocation(t, reqID, 5*time.Second), json.RawMessage(connectEvent(tt.id, tt.protocols)))
			if err != nil {
				t.Fatalf("Register: %v", err)
			}
			var raw map[string]any
			_ = json.Unmarshal(out, &raw)
			ws, _ := raw["websocket"].(map[string]any)
			want := map[string]any{"action": "connecting", "secConnectionID": tt.id}
			if tt.wantProtocol != "" {
				want["secWebSocketProtocol"] = tt.wantProtocol
			}
			if raw["errNo"] != 0.0 || raw["errMsg"] != "ok" || !reflect.DeepEqual(ws, want) {
				t.Errorf("reply %s, want errNo 0, ok, websocket %v", out, want)
			}

			tok := subjects.Token(tt.id)
			msgs := obs.stored(t)
			if len(msgs) != i+1 {
				t.Fatalf("WS_IN holds %d messages, want %d", len(msgs), i+1)
			}
			m := msgs[i]
			if m.Subject != obs.names.Connect(tok) {
				t.Errorf("subject %q, want %q", m.Subject, obs.names.Connect(tok))
			}
			if got := m.Header.Get(subjects.HeaderConnID); got != tt.id {
				t.Errorf("Ws-Connection-Id %q, want %q", got, tt.id)
			}
			if got := m.Header.Get(subjects.HeaderMsgID); got != reqID {
				t.Errorf("Nats-Msg-Id %q, want %q", got, reqID)
			}
			var ce subjects.ConnectEvent
			if err := json.Unmarshal(m.Data, &ce); err != nil {
				t.Fatal(err)
			}
			if ce.ConnectionID != tt.id || ce.Token != tok || ce.ServiceID != "service-1" || ce.Stage != "release" ||
				ce.SourceIP != "10.0.0.1" || !reflect.DeepEqual(ce.Protocols, tt.wantProtocols) || ce.ConnectedAt.IsZero() ||
				ce.ConnectedAt.Location() != time.UTC || len(ce.RequestContext) == 0 {
				t.Errorf("connect event %s", m.Data)
			}
			if !strings.Contains(string(m.Data), `"connectedAt":"`) || !strings.Contains(string(m.Data), `Z","sourceIp"`) {
				t.Errorf("connectedAt is not RFC 3339 UTC in %s", m.Data)
			}
			rec := obs.record(t, tok)
			if rec == nil || !reflect.DeepEqual(*rec, ce) {
				t.Errorf("registry record %+v, want the connect event %+v", rec, ce)
			}
		})
	}
}

func TestTransferAndCleanup(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	f := newFunctions(t, s.ClientURL(), nil)
	tok := subjects.Token(connID)
	if out, _ := f.Register(invocation(t, "r0", 5*time.Second), json.RawMessage(connectEvent(connID, ""))); reply(t, out).ErrNo != 0 {
		t.Fatalf("register: %s", out)
	}
	bin := []byte{0, 1, 2, 0xfe, 0xff}
	steps := []struct {
		name     string
		call     func(context.Context, json.RawMessage) (json.RawMessage, error)
		payload  string
		subject  string
		data     []byte
		dataType string
	}{
		{"text", f.Transfer, dataEvent(connID, "text", "héllo"), obs.names.Message(tok), []byte("héllo"), "text"},
		{"binary", f.Transfer, dataEvent(connID, "binary", base64.StdEncoding.EncodeToString(bin)), obs.names.Message(tok), bin, "binary"},
		{"data recv", f.Transfer, `{"websocket":{"action":"data recv","secConnectionID":"` + connID + `","dataType":"text","data":"r"}}`, obs.names.Message(tok), []byte("r"), "text"},
		{"closing", f.Cleanup, closingEvent(connID), obs.names.Disconnect(tok), nil, ""},
	}
	for i, st := range steps {
		reqID := "req-" + st.name
		out, err := st.call(invocation(t, reqID, 5*time.Second), json.RawMessage(st.payload))
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if string(out) != `{"errNo":0,"errMsg":"ok"}` {
			t.Errorf("%s: reply %s", st.name, out)
		}
		msgs := obs.stored(t)
		if len(msgs) != i+2 {
			t.Fatalf("%s: WS_IN holds %d messages, want %d", st.name, len(msgs), i+2)
		}
		m := msgs[i+1]
		if m.Subject != st.subject {
			t.Errorf("%s: subject %q, want %q", st.name, m.Subject, st.subject)
		}
		wantMsgID := reqID
		if st.name == "closing" {
			wantMsgID = subjects.DisconnectMsgID(tok) // one disconnect per connection
		}
		if m.Header.Get(subjects.HeaderConnID) != connID || m.Header.Get(subjects.HeaderMsgID) != wantMsgID || m.Header.Get(subjects.HeaderDataType) != st.dataType {
			t.Errorf("%s: headers %v", st.name, m.Header)
		}
		if st.data != nil && string(m.Data) != string(st.data) {
			t.Errorf("%s: data %q, want %q", st.name, m.Data, st.data)
		}
		if st.name == "closing" {
			var de subjects.DisconnectEvent
			if err := json.Unmarshal(m.Data, &de); err != nil || de.ConnectionID != connID || de.Token != tok || de.Reason != "client" || de.At.IsZero() {
				t.Errorf("disconnect event %s (%v)", m.Data, err)
			}
			if rec := obs.record(t, tok); rec != nil {
				t.Errorf("registry record %+v survives the cleanup", rec)
			}
		}
	}
}

func TestWebSocketDispatches(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	f := newFunctions(t, s.ClientURL(), nil)
	tok := subjects.Token(connID)
	tests := []struct {
		name        string
		payload     string
		wantReply   string // exact, or "" to skip
		wantErrNo   int
		wantErr     error
		wantSubject string // of the newest stored message
	}{
		{"connecting", connectEvent(connID, "p1,p2"), "", 0, nil, obs.names.Connect(tok)},
		{"data send", dataEvent(connID, "text", "x"), `{"errNo":0,"errMsg":"ok"}`, 0, nil, obs.names.Message(tok)},
		{"closing", closingEvent(connID), `{"errNo":0,"errMsg":"ok"}`, 0, nil, obs.names.Disconnect(tok)},
		{"no websocket", `{"requestContext":{}}`, `{"errNo":102,"errMsg":"not found websocket"}`, 102, nil, ""},
		{"no request context", `{"websocket":{"action":"connecting","secConnectionID":"a"}}`, `{"errNo":101,"errMsg":"not found request context"}`, 101, nil, ""},
		{"unknown action", `{"websocket":{"action":"shout","secConnectionID":"a"}}`, "", 0, functions.ErrBadEvent, ""},
		{"no action", `{"websocket":{"secConnectionID":"a"}}`, "", 0, functions.ErrBadEvent, ""},
		{"not json", `{`, "", 0, functions.ErrBadEvent, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(obs.stored(t))
			out, err := f.WebSocket(invocation(t, "ws-"+tt.name, 5*time.Second), json.RawMessage(tt.payload))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("WebSocket: %v", err)
			}
			if tt.wantReply != "" && string(out) != tt.wantReply {
				t.Errorf("reply %s, want %s", out, tt.wantReply)
			}
			if got := reply(t, out).ErrNo; got != tt.wantErrNo {
				t.Errorf("errNo %d, want %d", got, tt.wantErrNo)
			}
			msgs := obs.stored(t)
			if tt.wantSubject == "" {
				if len(msgs) != before {
					t.Errorf("stored %d messages, want none", len(msgs)-before)
				}
				return
			}
			if len(msgs) != before+1 || msgs[len(msgs)-1].Subject != tt.wantSubject {
				t.Errorf("stored %d messages, newest on %v; want one on %s", len(msgs)-before, msgs[len(msgs)-1].Subject, tt.wantSubject)
			}
		})
	}
	if got := reply(t, mustInvoke(t, f.Invoker(functions.RoleWebSocket), connectEvent("via-invoker", "x"))); got.ErrNo != 0 || got.WebSocket.SecWebSocketProtocol != "x" {
		t.Errorf("Invoker(websocket) reply %+v", got)
	}
}

func mustInvoke(t *testing.T, inv functions.Invoker, payload string) []byte {
	t.Helper()
	out, err := inv.Invoke(invocation(t, "", 5*time.Second), []byte(payload))
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	return out
}

func TestInvokerRoles(t *testing.T) {
	s := startNATS(t)
	observe(t, s, true)
	f := newFunctions(t, s.ClientURL(), nil)
	for role, payload := range map[string]string{
		functions.RoleRegister:  connectEvent("r", ""),
		functions.RoleTransfer:  dataEvent("r", "text", "x"),
		functions.RoleCleanup:   closingEvent("r"),
		functions.RoleWebSocket: closingEvent("r"),
	} {
		if got := reply(t, mustInvoke(t, f.Invoker(role), payload)); got.ErrNo != 0 || got.ErrMsg != "ok" {
			t.Errorf("%s: reply %+v", role, got)
		}
	}
	if _, err := f.Invoker("bogus").Invoke(context.Background(), []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown role: error %v", err)
	}
}

func TestAuthorization(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	// authorizers answer P.auth.connect; each test case picks one by its
	// connection id so that one server serves the whole table.
	var asked atomic.Int32
	sub, err := obs.nc.Subscribe(obs.names.AuthConnect(), func(m *nats.Msg) {
		asked.Add(1)
		var ce subjects.ConnectEvent
		_ = json.Unmarshal(m.Data, &ce)
		if m.Header.Get(subjects.HeaderConnID) != ce.ConnectionID {
			_ = m.Respond([]byte(`{"allow":false,"errMsg":"header mismatch"}`))
			return
		}
		switch {
		case strings.HasPrefix(ce.ConnectionID, "allow"):
			_ = m.Respond([]byte(`{"allow":true,"userId":"alice","groups":["room1","room2","room1"],"protocol":"chosen","state":{"plan":"pro"}}`))
		case strings.HasPrefix(ce.ConnectionID, "deny-code"):
			_ = m.Respond([]byte(`{"allow":false,"errNo":4001,"errMsg":"token expired"}`))
		case strings.HasPrefix(ce.ConnectionID, "deny"):
			_ = m.Respond([]byte(`{"allow":false}`))
		case strings.HasPrefix(ce.ConnectionID, "garbage"):
			_ = m.Respond([]byte(`not json`))
		case strings.HasPrefix(ce.ConnectionID, "badproto"):
			_ = m.Respond([]byte(`{"allow":true,"protocol":"never-offered"}`))
		case strings.HasPrefix(ce.ConnectionID, "badgroup"):
			_ = m.Respond([]byte(`{"allow":true,"groups":["a.b"]}`))
		case strings.HasPrefix(ce.ConnectionID, "toomany"):
			// One past the limit (issue 7): refused, not stored.
			groups := make([]string, subjects.MaxGroups+1)
			for i := range groups {
				groups[i] = fmt.Sprintf("g%d", i)
			}
			data, _ := json.Marshal(subjects.AuthReply{Allow: true, Groups: groups})
			_ = m.Respond(data)
		case strings.HasPrefix(ce.ConnectionID, "silent"):
			// never answers: a timeout
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		mode      functions.AuthMode
		id        string
		noAuth    bool // no authorizer subscribed at all
		wantErrNo int
		wantMsg   string
		wantUser  string // when accepted
	}{
		{functions.AuthOff, "allow-off", false, 0, "ok", ""},
		{functions.AuthOff, "deny-off", false, 0, "ok", ""},
		{functions.AuthOptional, "allow-opt", false, 0, "ok", "alice"},
		{functions.AuthOptional, "deny-opt", false, 403, "connection not authorized", ""},
		{functions.AuthOptional, "deny-code-opt", false, 4001, "token expired", ""},
		{functions.AuthOptional, "silent-opt", false, 0, "ok", ""},
		{functions.AuthOptional, "garbage-opt", false, 500, "not an auth reply", ""},
		{functions.AuthRequired, "allow-req", false, 0, "ok", "alice"},
		{functions.AuthRequired, "deny-req", false, 403, "connection not authorized", ""},
		{functions.AuthRequired, "deny-code-req", false, 4001, "token expired", ""},
		{functions.AuthRequired, "silent-req", false, 503, "no reply within", ""},
		{functions.AuthRequired, "garbage-req", false, 500, "not an auth reply", ""},
		{functions.AuthRequired, "badgroup-req", false, 500, "group", ""},
		{functions.AuthRequired, "badproto-req", false, 500, "not one the client offered", ""},
		{functions.AuthRequired, "toomany-req", false, 500, "too many groups", ""},
		// Last: these unsubscribe the authorizer.
		{functions.AuthOptional, "noresp-opt", true, 0, "ok", ""},
		{functions.AuthRequired, "noresp-req", true, 503, "no responder", ""},
	}
	fns := map[functions.AuthMode]*functions.Functions{}
	for _, mode := range []functions.AuthMode{functions.AuthOff, functions.AuthOptional, functions.AuthRequired} {
		fns[mode] = newFunctions(t, s.ClientURL(), func(o *functions.Options) {
			o.Auth, o.AuthTimeout = mode, 300*time.Millisecond
		})
	}
	rejected := map[string]bool{}
	for _, tt := range tests {
		if tt.wantErrNo != 0 {
			rejected[tt.id] = true
		}
		t.Run(tt.id, func(t *testing.T) {
			if tt.noAuth {
				_ = sub.Unsubscribe()
			}
			before := asked.Load()
			out, err := fns[tt.mode].Register(invocation(t, "req-"+tt.id, 5*time.Second), json.RawMessage(connectEvent(tt.id, "offered, chosen")))
			if err != nil {
				t.Fatalf("Register: %v", err)
			}
			r := reply(t, out)
			if r.ErrNo != tt.wantErrNo || !strings.Contains(r.ErrMsg, tt.wantMsg) {
				t.Fatalf("reply %s, want errNo %d with %q", out, tt.wantErrNo, tt.wantMsg)
			}
			if tt.mode == functions.AuthOff && asked.Load() != before {
				t.Error("auth off asked the authorizer")
			}
			tok := subjects.Token(tt.id)
			rec := obs.record(t, tok)
			if r.ErrNo != 0 {
				if r.WebSocket != nil {
					t.Errorf("rejection carries websocket %+v", r.WebSocket)
				}
				if rec != nil {
					t.Errorf("rejected connection has a registry record %+v", rec)
				}
				return
			}
			if rec == nil {
				t.Fatal("accepted connection has no registry record")
			}
			wantProto := "offered"
			if tt.wantUser != "" {
				wantProto = "chosen"
				if rec.UserID != "alice" || !reflect.DeepEqual(rec.Groups, []string{"room1", "room2"}) || string(rec.State) != `{"plan":"pro"}` {
					t.Errorf("record user %q groups %q state %s; want the authorizer's", rec.UserID, rec.Groups, rec.State)
				}
			} else if rec.UserID != "" || len(rec.Groups) != 0 || len(rec.State) != 0 {
				t.Errorf("record user %q groups %q state %s; want none", rec.UserID, rec.Groups, rec.State)
			}
			if r.WebSocket == nil || r.WebSocket.SecWebSocketProtocol != wantProto {
				t.Errorf("reply %s, want protocol %q", out, wantProto)
			}
		})
	}
	// Rejected connections were never announced.
	for _, m := range obs.stored(t) {
		if id := m.Header.Get(subjects.HeaderConnID); rejected[id] {
			t.Errorf("rejected connection %q published on %s", id, m.Subject)
		}
	}
}

func TestMalformedEventsNeedNoNATS(t *testing.T) {
	// Nothing listens on this URL: the answers below must not need NATS.
	f := newFunctions(t, "nats://127.0.0.1:1", nil)
	tests := []struct {
		name, payload string
		wantErrNo     int
		wantMsg       string
	}{
		{"no request context", `{"websocket":{"action":"connecting","secConnectionID":"a"}}`, 101, "not found request context"},
		{"no websocket", `{"requestContext":{"serviceId":"s"}}`, 102, "not found websocket"},
		{"empty", `{}`, 101, "not found request context"},
		{"not json", `{"requestContext":`, 400, "bad gateway event"},
		{"missing id", `{"requestContext":{},"websocket":{"action":"connecting"}}`, 400, "secConnectionID"},
	}
	for _, tt := range tests {
		out, err := f.Register(invocation(t, "", 5*time.Second), json.RawMessage(tt.payload))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		r := reply(t, out)
		if r.ErrNo != tt.wantErrNo || !strings.Contains(r.ErrMsg, tt.wantMsg) || r.WebSocket != nil {
			t.Errorf("%s: reply %s, want errNo %d %q", tt.name, out, tt.wantErrNo, tt.wantMsg)
		}
		if tt.wantErrNo < 200 && r.ErrMsg != tt.wantMsg {
			t.Errorf("%s: errMsg %q, want the seed's %q", tt.name, r.ErrMsg, tt.wantMsg)
		}
	}
	for _, tt := range []struct {
		name, payload string
		want          error
	}{
		{"bad base64", dataEvent("a", "binary", "%%%"), functions.ErrBadEvent},
		{"missing id", dataEvent("", "text", "x"), functions.ErrBadEvent},
		{"oversize", dataEvent("a", "text", strings.Repeat("x", functions.DefaultMaxMessageSize+1)), functions.ErrTooLarge},
		{"unknown type", dataEvent("a", "utf16", "x"), functions.ErrBadEvent},
		{"no websocket", `{}`, functions.ErrBadEvent},
	} {
		if _, err := f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(tt.payload)); !errors.Is(err, tt.want) {
			t.Errorf("transfer %s: error %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := f.Cleanup(invocation(t, "", 5*time.Second), json.RawMessage(`{"websocket":{"action":"closing"}}`)); !errors.Is(err, functions.ErrBadEvent) {
		t.Errorf("cleanup without id: error %v, want ErrBadEvent", err)
	}
}

// Item 9 of issue 7: a message just under 1 MiB passed the size check (whose
// default was the server's max_payload) and then failed to store, a
// 500-class error. The default leaves room for the headers; a limit set
// above what the server stores is still answered "too large".
func TestMaxMessageSizeFitsMaxPayload(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	for _, tc := range []struct {
		name string
		max  int // 0: the default
		size int
		want error
	}{
		{"at the default", 0, functions.DefaultMaxMessageSize, nil},
		{"past the default", 0, functions.DefaultMaxMessageSize + 1, functions.ErrTooLarge},
		{"just under max_payload, limit set to 1 MiB", 1 << 20, 1<<20 - 100, functions.ErrTooLarge},
	} {
		f := newFunctions(t, s.ClientURL(), func(o *functions.Options) {
			if tc.max != 0 {
				o.MaxMessageSize = tc.max
			}
		})
		before := len(obs.stored(t))
		_, err := f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(dataEvent("a", "text", strings.Repeat("x", tc.size))))
		if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
		if tc.want != nil && !strings.Contains(err.Error(), "too large") {
			t.Errorf("%s: error %q does not say too large", tc.name, err)
		}
		if stored := len(obs.stored(t)) - before; (tc.want == nil) != (stored == 1) {
			t.Errorf("%s: %d messages stored", tc.name, stored)
		}
	}
}

func TestMaxMessageSize(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	f := newFunctions(t, s.ClientURL(), func(o *functions.Options) { o.MaxMessageSize = 4 })
	tests := []struct {
		payload string
		want    error
	}{
		{dataEvent("a", "text", "1234"), nil},
		{dataEvent("a", "text", "12345"), functions.ErrTooLarge},
		{dataEvent("a", "binary", base64.StdEncoding.EncodeToString([]byte("1234"))), nil},
		{dataEvent("a", "binary", base64.StdEncoding.EncodeToString([]byte("12345"))), functions.ErrTooLarge},
	}
	stored := 0
	for _, tt := range tests {
		_, err := f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(tt.payload))
		if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
			t.Errorf("%s: error %v, want %v", tt.payload, err, tt.want)
		}
		if err == nil {
			stored++
		}
		if err != nil && !strings.Contains(err.Error(), "WSBRIDGE_MAX_MESSAGE_SIZE") {
			t.Errorf("error %q does not name the setting", err)
		}
	}
	if got := len(obs.stored(t)); got != stored {
		t.Errorf("WS_IN holds %d messages, want %d", got, stored)
	}
}

func TestDedupByRequestID(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	f := newFunctions(t, s.ClientURL(), nil)
	for range 2 {
		if _, err := f.Transfer(invocation(t, "same-request", 5*time.Second), json.RawMessage(dataEvent(connID, "text", "once"))); err != nil {
			t.Fatal(err)
		}
		if out, _ := f.Register(invocation(t, "same-connect", 5*time.Second), json.RawMessage(connectEvent(connID, ""))); reply(t, out).ErrNo != 0 {
			t.Fatalf("register: %s", out)
		}
	}
	// Without an SCF request id every invocation gets its own, so distinct
	// events are never taken for duplicates.
	for range 2 {
		if _, err := f.Transfer(context.Background(), json.RawMessage(dataEvent(connID, "text", "twice"))); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, m := range obs.stored(t) {
		got = append(got, m.Header.Get(subjects.HeaderMsgID))
	}
	if len(got) != 4 || got[0] != "same-request" || got[1] != "same-connect" || got[2] == "" || got[2] == got[3] {
		t.Errorf("stored Nats-Msg-Ids %q, want same-request, same-connect and two distinct generated ids", got)
	}
}

func TestStreamsMissing(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, false)
	f := newFunctions(t, s.ClientURL(), nil)
	out, err := f.Register(invocation(t, "", 5*time.Second), json.RawMessage(connectEvent(connID, "")))
	if err != nil {
		t.Fatal(err)
	}
	if r := reply(t, out); r.ErrNo != 500 || !strings.Contains(r.ErrMsg, "not provisioned") || !strings.Contains(r.ErrMsg, "WS_CONNS") {
		t.Errorf("register without bucket: reply %s, want errNo 500 naming WS_CONNS", out)
	}
	if _, err := f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(dataEvent(connID, "text", "x"))); !errors.Is(err, functions.ErrNotProvisioned) {
		t.Errorf("transfer without stream: error %v, want ErrNotProvisioned", err)
	}
	if _, err := f.Cleanup(invocation(t, "", 5*time.Second), json.RawMessage(closingEvent(connID))); !errors.Is(err, functions.ErrNotProvisioned) {
		t.Errorf("cleanup without stream: error %v, want ErrNotProvisioned", err)
	}

	// With the bucket but not the stream, the record written before the
	// failed publish is taken back.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := obs.js.CreateKeyValue(ctx, obs.names.BucketConfig(subjects.StreamOptions{})); err != nil {
		t.Fatal(err)
	}
	out, _ = f.Register(invocation(t, "", 5*time.Second), json.RawMessage(connectEvent(connID, "")))
	if r := reply(t, out); r.ErrNo != 500 || !strings.Contains(r.ErrMsg, obs.names.Connect(subjects.Token(connID))) {
		t.Errorf("register without stream: reply %s, want errNo 500 naming the subject", out)
	}
	if rec := obs.record(t, subjects.Token(connID)); rec != nil {
		t.Errorf("rejected connection left registry record %+v", rec)
	}
}

func TestNATSDown(t *testing.T) {
	s := startNATS(t)
	observe(t, s, true)
	f := newFunctions(t, s.ClientURL(), nil)
	if out, _ := f.Register(invocation(t, "", 5*time.Second), json.RawMessage(connectEvent(connID, ""))); reply(t, out).ErrNo != 0 {
		t.Fatalf("register while up: %s", out)
	}
	s.Shutdown()
	s.WaitForShutdown()

	out, err := f.Register(invocation(t, "", 2*time.Second), json.RawMessage(connectEvent("after", "")))
	if err != nil {
		t.Fatal(err)
	}
	if r := reply(t, out); r.ErrNo != 503 || !strings.Contains(r.ErrMsg, "NATS unavailable") || r.WebSocket != nil {
		t.Errorf("register while down: reply %s, want errNo 503", out)
	}
	if _, err := f.Transfer(invocation(t, "", 2*time.Second), json.RawMessage(dataEvent(connID, "text", "x"))); !errors.Is(err, functions.ErrUnavailable) {
		t.Errorf("transfer while down: error %v, want ErrUnavailable", err)
	}
	if _, err := f.Cleanup(invocation(t, "", 2*time.Second), json.RawMessage(closingEvent(connID))); !errors.Is(err, functions.ErrUnavailable) {
		t.Errorf("cleanup while down: error %v, want ErrUnavailable", err)
	}

	// A process whose first dial fails answers the same way, and keeps
	// trying on later invocations.
	never := newFunctions(t, "nats://127.0.0.1:1", nil)
	for range 2 {
		out, _ := never.Register(invocation(t, "", 2*time.Second), json.RawMessage(connectEvent("x", "")))
		if r := reply(t, out); r.ErrNo != 503 {
			t.Errorf("register, NATS never reachable: reply %s, want errNo 503", out)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	env := map[string]string{"WSBRIDGE_NATS_URL": "nats://127.0.0.1:1", "WSBRIDGE_AUTH": "sometimes"}
	f := functions.NewFromEnv(func(k string) string { return env[k] })
	defer f.Close()
	out, err := f.Register(invocation(t, "", 2*time.Second), json.RawMessage(connectEvent(connID, "")))
	if err != nil {
		t.Fatal(err)
	}
	if r := reply(t, out); r.ErrNo != 500 || !strings.Contains(r.ErrMsg, "WSBRIDGE_AUTH") {
		t.Errorf("register with bad config: reply %s, want errNo 500 naming WSBRIDGE_AUTH", out)
	}
	if _, err := f.Transfer(invocation(t, "", 2*time.Second), json.RawMessage(dataEvent(connID, "text", "x"))); !errors.Is(err, functions.ErrConfig) {
		t.Errorf("transfer with bad config: error %v, want ErrConfig", err)
	}
	// Configuration is read again until it is valid: SCF may supply it with
	// a later invocation.
	s := startNATS(t)
	observe(t, s, true)
	env = map[string]string{"WSBRIDGE_NATS_URL": s.ClientURL()}
	if _, err := f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(dataEvent(connID, "text", "x"))); err != nil {
		t.Errorf("transfer after fixing the config: %v", err)
	}

	noURL := functions.NewFromEnv(func(string) string { return "" })
	if _, err := noURL.Transfer(invocation(t, "", 2*time.Second), json.RawMessage(dataEvent(connID, "text", "x"))); !errors.Is(err, functions.ErrConfig) || !strings.Contains(err.Error(), "WSBRIDGE_NATS_URL") {
		t.Errorf("transfer without NATS URL: error %v, want ErrConfig naming WSBRIDGE_NATS_URL", err)
	}
	if _, err := functions.New(functions.Options{}, nil); !errors.Is(err, functions.ErrConfig) {
		t.Errorf("New(zero Options): error %v, want ErrConfig", err)
	}
}

// TestOldServerRefused: functions dialling a NATS server older than
// wsbridge needs answer every invocation with one line naming both
// versions, and register rejects with 500.
func TestOldServerRefused(t *testing.T) {
	bin, version := natstest.InstalledServer(t)
	if subjects.VersionAtLeast(version, subjects.MinServerVersion) {
		t.Skipf("the nats-server on PATH (%s) is not older than %s: no old server to refuse", version, subjects.MinServerVersion)
	}
	old := natstest.StartProcess(t, bin, "")
	f := newFunctions(t, old.URL, nil)
	out, err := f.Register(invocation(t, "", 5*time.Second), json.RawMessage(connectEvent(connID, "")))
	if err != nil {
		t.Fatal(err)
	}
	if r := reply(t, out); r.ErrNo != 500 || !strings.Contains(r.ErrMsg, version) || !strings.Contains(r.ErrMsg, subjects.MinServerVersion) {
		t.Errorf("register on nats-server %s: reply %s, want errNo 500 naming %s and %s", version, out, version, subjects.MinServerVersion)
	}
	_, err = f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(dataEvent(connID, "text", "x")))
	if !errors.Is(err, subjects.ErrServerTooOld) || strings.Contains(err.Error(), "\n") {
		t.Errorf("transfer on nats-server %s: %v, want one line saying the server is too old", version, err)
	}
}

func TestGivenConnection(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	f, err := functions.New(functions.DefaultOptions(), obs.nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(dataEvent(connID, "text", "x"))); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	f.Close()
	f.Close() // idempotent
	if obs.nc.IsClosed() {
		t.Error("Close closed the caller's connection")
	}
	if _, err := f.Transfer(invocation(t, "", 5*time.Second), json.RawMessage(dataEvent(connID, "text", "x"))); !errors.Is(err, functions.ErrClosed) {
		t.Errorf("transfer after Close: error %v, want ErrClosed", err)
	}
}
