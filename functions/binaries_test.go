package functions_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
	"github.com/wsbridge/wsbridge/subjects"
)

// The events of SPEC §1 as the gateway sends them.
const (
	specConnecting = `{"requestContext":{"serviceId":"service-0ck2a1q4","path":"/ws","httpMethod":"GET","requestId":"c6af9ac6-7b61-11e6-9a41-93e8deadbeef","identity":{"secretId":"AKIDexample"},"sourceIp":"10.0.2.14","stage":"release","websocketEnable":true},"websocket":{"action":"connecting","secConnectionID":"kGcK4x/+Vf1e7aT3Nd2u1A==","secWebSocketProtocol":"chat,superchat","secWebSocketExtensions":"permessage-deflate; client_max_window_bits"}}`
	specDataText   = `{"websocket":{"action":"data send","secConnectionID":"kGcK4x/+Vf1e7aT3Nd2u1A==","dataType":"text","data":"hello"}}`
	specDataBinary = `{"websocket":{"action":"data recv","secConnectionID":"kGcK4x/+Vf1e7aT3Nd2u1A==","dataType":"binary","data":"AAH+/w=="}}`
	specClosing    = `{"websocket":{"action":"closing","secConnectionID":"kGcK4x/+Vf1e7aT3Nd2u1A=="}}`

	specAccept = `{"errNo":0,"errMsg":"ok","websocket":{"action":"connecting","secConnectionID":"kGcK4x/+Vf1e7aT3Nd2u1A==","secWebSocketProtocol":"chat"}}`
	okPayload  = `{"errNo":0,"errMsg":"ok"}`
)

// TestFunctionBinaries runs the four function binaries as SCF does and
// invokes them over net/rpc with the gateway's events.
func TestFunctionBinaries(t *testing.T) {
	s := startNATS(t)
	obs := observe(t, s, true)
	dir := buildFunctions(t, "register", "transfer", "cleanup", "websocket")
	url := "WSBRIDGE_NATS_URL=" + s.ClientURL()
	fns := map[string]*scfrpc.Client{}
	for _, name := range []string{"register", "transfer", "cleanup"} {
		fns[name] = startFunction(t, filepath.Join(dir, name), url)
	}
	// The single-function deployment runs with required authorization, to
	// show the environment reaching the binary.
	fns["websocket"] = startFunction(t, filepath.Join(dir, "websocket"), url, "WSBRIDGE_AUTH=required", "WSBRIDGE_PREFIX=ws")
	sub, err := obs.nc.Subscribe(obs.names.AuthConnect(), func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"allow":true,"userId":"bob","protocol":"superchat"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	const id = "kGcK4x/+Vf1e7aT3Nd2u1A=="
	tok := subjects.Token(id)
	tests := []struct {
		fn, name, payload string
		wantReply         string // exact
		wantErr           string // substring of the function error instead
		wantSubject       string // stored on WS_IN, "" for nothing
		wantData          string
		wantType          string
	}{
		{"register", "connecting", specConnecting, specAccept, "", obs.names.Connect(tok), "", ""},
		{"register", "no request context", `{"websocket":{"action":"connecting","secConnectionID":"x"}}`, `{"errNo":101,"errMsg":"not found request context"}`, "", "", "", ""},
		{"register", "no websocket", `{"requestContext":{"serviceId":"s"}}`, `{"errNo":102,"errMsg":"not found websocket"}`, "", "", "", ""},
		{"transfer", "text", specDataText, okPayload, "", obs.names.Message(tok), "hello", "text"},
		{"transfer", "binary", specDataBinary, okPayload, "", obs.names.Message(tok), "\x00\x01\xfe\xff", "binary"},
		{"transfer", "bad base64", strings.Replace(specDataBinary, "AAH+/w==", "***", 1), "", "base64", "", "", ""},
		{"transfer", "not json", `{"websocket":`, "", "unexpected end", "", "", ""},
		{"cleanup", "closing", specClosing, okPayload, "", obs.names.Disconnect(tok), "", ""},
		{"websocket", "connecting", specConnecting, strings.Replace(specAccept, `"chat"`, `"superchat"`, 1), "", obs.names.Connect(tok), "", ""},
		{"websocket", "text", specDataText, okPayload, "", obs.names.Message(tok), "hello", "text"},
		// The same connection closing again is not announced again: one
		// disconnect event per connection (subjects.DisconnectMsgID).
		{"websocket", "closing", specClosing, okPayload, "", "", "", ""},
	}
	for i, tt := range tests {
		t.Run(tt.fn+"/"+tt.name, func(t *testing.T) {
			before := len(obs.stored(t))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			reqID := "scf-req-" + string(rune('a'+i))
			out, err := fns[tt.fn].InvokeID(ctx, []byte(tt.payload), reqID)
			if tt.wantErr != "" {
				var fe *scfrpc.FunctionError
				if !errors.As(err, &fe) || !strings.Contains(fe.Message, tt.wantErr) {
					t.Fatalf("error %v, want a function error containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Invoke: %v", err)
			} else if string(out) != tt.wantReply {
				t.Errorf("reply\n got %s\nwant %s", out, tt.wantReply)
			}
			msgs := obs.stored(t)
			if tt.wantSubject == "" {
				if len(msgs) != before {
					t.Errorf("stored %d messages, want none", len(msgs)-before)
				}
				return
			}
			if len(msgs) != before+1 {
				t.Fatalf("stored %d messages, want 1", len(msgs)-before)
			}
			m := msgs[len(msgs)-1]
			wantMsgID := reqID
			if strings.HasPrefix(tt.wantSubject, "ws.in.disconnect.") {
				wantMsgID = subjects.DisconnectMsgID(tok)
			}
			if m.Subject != tt.wantSubject || m.Header.Get(subjects.HeaderConnID) != id || m.Header.Get(subjects.HeaderMsgID) != wantMsgID ||
				m.Header.Get(subjects.HeaderDataType) != tt.wantType {
				t.Errorf("stored on %s with headers %v; want %s, id %s, request %s, type %q", m.Subject, m.Header, tt.wantSubject, id, reqID, tt.wantType)
			}
			if tt.wantData != "" && string(m.Data) != tt.wantData {
				t.Errorf("data %q, want %q", m.Data, tt.wantData)
			}
			if strings.HasPrefix(tt.wantSubject, "ws.in.connect.") {
				var ce subjects.ConnectEvent
				if err := json.Unmarshal(m.Data, &ce); err != nil {
					t.Fatal(err)
				}
				if ce.ServiceID != "service-0ck2a1q4" || ce.SourceIP != "10.0.2.14" || strings.Join(ce.Protocols, ",") != "chat,superchat" ||
					strings.Join(ce.Extensions, ",") != "permessage-deflate,client_max_window_bits" {
					t.Errorf("connect event %s", m.Data)
				}
				if wantUser := map[string]string{"register": "", "websocket": "bob"}[tt.fn]; ce.UserID != wantUser {
					t.Errorf("userId %q, want %q", ce.UserID, wantUser)
				}
				if rec := obs.record(t, tok); rec == nil || rec.UserID != ce.UserID {
					t.Errorf("registry record %+v", rec)
				}
			}
		})
	}
}
