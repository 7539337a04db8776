package functions

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/wsbridge/wsbridge/subjects"
)

func TestDecodeEvent(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		wantErr bool
		wantRC  bool // requestContext present
		wantWS  bool
	}{
		{"full", `{"requestContext":{"serviceId":"s"},"websocket":{"action":"connecting","secConnectionID":"a"}}`, false, true, true},
		{"unknown fields", `{"x":1,"requestContext":{"y":[1]},"websocket":{"z":{},"secConnectionID":"a"}}`, false, true, true},
		{"null request context", `{"requestContext":null,"websocket":{}}`, false, false, true},
		{"empty object", `{}`, false, false, false},
		{"null", `null`, false, false, false},
		{"array", `[]`, true, false, false},
		{"not json", `{`, true, false, false},
		{"websocket string", `{"websocket":"x"}`, true, false, false},
		{"data number", `{"websocket":{"data":1}}`, true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := DecodeEvent([]byte(tt.payload))
			if (err != nil) != tt.wantErr {
				t.Fatalf("DecodeEvent error = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrBadEvent) {
					t.Errorf("error %v is not ErrBadEvent", err)
				}
				return
			}
			if got := len(ev.RequestContext) > 0; got != tt.wantRC {
				t.Errorf("requestContext present = %v, want %v", got, tt.wantRC)
			}
			if got := ev.WebSocket != nil; got != tt.wantWS {
				t.Errorf("websocket present = %v, want %v", got, tt.wantWS)
			}
		})
	}
}

func TestSplitLists(t *testing.T) {
	tests := []struct {
		in                    string
		protocols, extensions []string
	}{
		{"", []string{}, []string{}},
		{"chat", []string{"chat"}, []string{"chat"}},
		{" chat , superchat ,, ", []string{"chat", "superchat"}, []string{"chat", "superchat"}},
		{"permessage-deflate; client_max_window_bits", []string{"permessage-deflate; client_max_window_bits"}, []string{"permessage-deflate", "client_max_window_bits"}},
		{"a;b, c", []string{"a;b", "c"}, []string{"a", "b", "c"}},
	}
	for _, tt := range tests {
		if got := SplitProtocols(tt.in); !reflect.DeepEqual(got, tt.protocols) {
			t.Errorf("SplitProtocols(%q) = %q, want %q", tt.in, got, tt.protocols)
		}
		if got := SplitExtensions(tt.in); !reflect.DeepEqual(got, tt.extensions) {
			t.Errorf("SplitExtensions(%q) = %q, want %q", tt.in, got, tt.extensions)
		}
	}
}

func TestParseConnect(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("CST", 8*3600))
	const id = "kGcK4x/+Vf1e7aT3Nd2u1A=="
	tests := []struct {
		name     string
		payload  string
		wantCode int // 0: parses; else the rejection's errNo
		wantMsg  string
		check    func(t *testing.T, ce subjects.ConnectEvent)
	}{
		{
			name: "spec event",
			payload: `{"requestContext":{"serviceId":"service-1","path":"/ws","httpMethod":"GET","requestId":"r1","identity":{},"sourceIp":"1.2.3.4","stage":"release","websocketEnable":true},
				"websocket":{"action":"connecting","secConnectionID":"` + id + `","secWebSocketProtocol":"chat, superchat","secWebSocketExtensions":"permessage-deflate; client_max_window_bits"}}`,
			check: func(t *testing.T, ce subjects.ConnectEvent) {
				want := subjects.ConnectEvent{
					ConnectionID: id, Token: subjects.Token(id), ConnectedAt: now.UTC(), SourceIP: "1.2.3.4",
					ServiceID: "service-1", Stage: "release", Protocols: []string{"chat", "superchat"},
					Extensions: []string{"permessage-deflate", "client_max_window_bits"}, Groups: []string{},
				}
				got := ce
				got.RequestContext = nil
				if !reflect.DeepEqual(got, want) {
					t.Errorf("connect event\n got %+v\nwant %+v", got, want)
				}
				var rc map[string]any
				if err := json.Unmarshal(ce.RequestContext, &rc); err != nil || rc["requestId"] != "r1" || rc["websocketEnable"] != true {
					t.Errorf("requestContext kept as %s (%v)", ce.RequestContext, err)
				}
			},
		},
		{
			name:    "serviceName",
			payload: `{"requestContext":{"serviceName":"svc-name"},"websocket":{"action":"connecting","secConnectionID":"a"}}`,
			check: func(t *testing.T, ce subjects.ConnectEvent) {
				if ce.ServiceID != "svc-name" {
					t.Errorf("serviceId = %q, want svc-name", ce.ServiceID)
				}
			},
		},
		{
			name:    "serviceId wins over serviceName",
			payload: `{"requestContext":{"serviceId":"id","serviceName":"name"},"websocket":{"secConnectionID":"a"}}`,
			check: func(t *testing.T, ce subjects.ConnectEvent) {
				if ce.ServiceID != "id" {
					t.Errorf("serviceId = %q, want id", ce.ServiceID)
				}
			},
		},
		{
			name:    "no protocols or extensions",
			payload: `{"requestContext":{},"websocket":{"action":"connecting","secConnectionID":"a"}}`,
			check: func(t *testing.T, ce subjects.ConnectEvent) {
				if ce.Protocols == nil || len(ce.Protocols) != 0 || ce.Extensions == nil || len(ce.Extensions) != 0 {
					t.Errorf("protocols %#v extensions %#v, want empty non-nil", ce.Protocols, ce.Extensions)
				}
			},
		},
		{name: "no request context", payload: `{"websocket":{"action":"connecting","secConnectionID":"a"}}`, wantCode: 101, wantMsg: "not found request context"},
		{name: "null request context", payload: `{"requestContext":null,"websocket":{"secConnectionID":"a"}}`, wantCode: 101, wantMsg: "not found request context"},
		{name: "no websocket", payload: `{"requestContext":{"serviceId":"s"}}`, wantCode: 102, wantMsg: "not found websocket"},
		{name: "neither", payload: `{}`, wantCode: 101, wantMsg: "not found request context"},
		{name: "request context not an object", payload: `{"requestContext":"x","websocket":{"secConnectionID":"a"}}`, wantCode: 101, wantMsg: "invalid request context"},
		{name: "missing id", payload: `{"requestContext":{},"websocket":{"action":"connecting"}}`, wantCode: 400, wantMsg: "secConnectionID"},
		{name: "control byte in id", payload: `{"requestContext":{},"websocket":{"secConnectionID":"a\r\nX: y"}}`, wantCode: 400, wantMsg: "control byte"},
		{name: "long id", payload: `{"requestContext":{},"websocket":{"secConnectionID":"` + strings.Repeat("a", subjects.MaxConnIDLen+1) + `"}}`, wantCode: 400, wantMsg: "more than"},
		{name: "wrong action", payload: `{"requestContext":{},"websocket":{"action":"closing","secConnectionID":"a"}}`, wantCode: 400, wantMsg: `action "closing"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := DecodeEvent([]byte(tt.payload))
			if err != nil {
				t.Fatal(err)
			}
			ce, err := parseConnect(ev, now)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("parseConnect: %v", err)
				}
				tt.check(t, ce)
				return
			}
			if err == nil {
				t.Fatalf("parseConnect accepted, want errNo %d", tt.wantCode)
			}
			code, msg := errNo(err), err.Error()
			var re *rejectError
			if errors.As(err, &re) {
				code, msg = re.code, re.msg
			}
			if code != tt.wantCode || !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("got errNo %d %q, want %d containing %q", code, msg, tt.wantCode, tt.wantMsg)
			}
			if tt.wantCode < 200 && msg != tt.wantMsg && tt.wantMsg != "invalid request context" {
				t.Errorf("seed answer %q, want exactly %q", msg, tt.wantMsg)
			}
		})
	}
}

func TestParseData(t *testing.T) {
	const max = 8
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name     string
		payload  string
		wantType string
		wantData []byte
		wantErr  error
	}{
		{"text", `{"websocket":{"action":"data send","secConnectionID":"a","dataType":"text","data":"hi"}}`, "text", []byte("hi"), nil},
		{"data recv", `{"websocket":{"action":"data recv","secConnectionID":"a","dataType":"text","data":"hi"}}`, "text", []byte("hi"), nil},
		{"no action no type", `{"websocket":{"secConnectionID":"a","data":"x"}}`, "text", []byte("x"), nil},
		{"empty text", `{"websocket":{"action":"data send","secConnectionID":"a","dataType":"text"}}`, "text", []byte{}, nil},
		{"binary", `{"websocket":{"action":"data send","secConnectionID":"a","dataType":"binary","data":"` + b64([]byte{0, 1, 0xff}) + `"}}`, "binary", []byte{0, 1, 0xff}, nil},
		{"binary at limit", `{"websocket":{"secConnectionID":"a","dataType":"binary","data":"` + b64(make([]byte, max)) + `"}}`, "binary", make([]byte, max), nil},
		{"text at limit", `{"websocket":{"secConnectionID":"a","data":"12345678"}}`, "text", []byte("12345678"), nil},
		{"text over limit", `{"websocket":{"secConnectionID":"a","data":"123456789"}}`, "", nil, ErrTooLarge},
		{"binary over limit", `{"websocket":{"secConnectionID":"a","dataType":"binary","data":"` + b64(make([]byte, max+1)) + `"}}`, "", nil, ErrTooLarge},
		{"bad base64", `{"websocket":{"secConnectionID":"a","dataType":"binary","data":"!!!"}}`, "", nil, ErrBadEvent},
		{"url base64", `{"websocket":{"secConnectionID":"a","dataType":"binary","data":"-_8="}}`, "", nil, ErrBadEvent},
		{"unpadded base64", `{"websocket":{"secConnectionID":"a","dataType":"binary","data":"AAE"}}`, "", nil, ErrBadEvent},
		{"missing id", `{"websocket":{"action":"data send","dataType":"text","data":"hi"}}`, "", nil, ErrBadEvent},
		{"missing websocket", `{"requestContext":{}}`, "", nil, ErrBadEvent},
		{"unknown type", `{"websocket":{"secConnectionID":"a","dataType":"json","data":"{}"}}`, "", nil, ErrBadEvent},
		{"wrong action", `{"websocket":{"action":"connecting","secConnectionID":"a","data":"x"}}`, "", nil, ErrBadEvent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := DecodeEvent([]byte(tt.payload))
			if err != nil {
				t.Fatal(err)
			}
			m, err := parseData(ev, max)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("parseData error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseData: %v", err)
			}
			if m.dataType != tt.wantType || !bytes.Equal(m.data, tt.wantData) || m.connID != "a" || m.token != subjects.Token("a") {
				t.Errorf("got %s %q id %q token %q, want %s %q id a", m.dataType, m.data, m.connID, m.token, tt.wantType, tt.wantData)
			}
		})
	}
}

func TestParseClosing(t *testing.T) {
	tests := []struct {
		payload string
		wantID  string
		wantErr bool
	}{
		{`{"websocket":{"action":"closing","secConnectionID":"a+b/="}}`, "a+b/=", false},
		{`{"websocket":{"secConnectionID":"a"}}`, "a", false},
		{`{"websocket":{"action":"closing"}}`, "", true},
		{`{"websocket":{"action":"data send","secConnectionID":"a"}}`, "", true},
		{`{}`, "", true},
	}
	for _, tt := range tests {
		ev, err := DecodeEvent([]byte(tt.payload))
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseClosing(ev)
		if (err != nil) != tt.wantErr || got != tt.wantID {
			t.Errorf("parseClosing(%s) = %q, %v; want %q, error %v", tt.payload, got, err, tt.wantID, tt.wantErr)
		}
		if err != nil && !errors.Is(err, ErrBadEvent) {
			t.Errorf("parseClosing(%s) error %v is not ErrBadEvent", tt.payload, err)
		}
	}
}

func TestOptionsFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    func(o *Options) // adjusts DefaultOptions to the expectation
		wantErr string           // substring; "" means valid
	}{
		{"defaults", nil, func(o *Options) {}, ""},
		{"all set", map[string]string{
			"WSBRIDGE_NATS_URL": "nats://h:4222", "WSBRIDGE_NATS_TOKEN": "t", "WSBRIDGE_PREFIX": "acme.ws",
			"WSBRIDGE_AUTH": "Required", "WSBRIDGE_AUTH_TIMEOUT": "750ms", "WSBRIDGE_MAX_MESSAGE_SIZE": "65536",
			"WSBRIDGE_LOG_LEVEL": "DEBUG", "WSBRIDGE_LOG_FORMAT": "json",
		}, func(o *Options) {
			o.NATS.URL, o.NATS.Token, o.Prefix = "nats://h:4222", "t", "acme.ws"
			o.Auth, o.AuthTimeout, o.MaxMessageSize = AuthRequired, 750*time.Millisecond, 65536
			o.LogLevel, o.LogFormat = "debug", "json"
		}, ""},
		{"bad auth", map[string]string{"WSBRIDGE_AUTH": "maybe"}, nil, "WSBRIDGE_AUTH"},
		{"bad auth timeout", map[string]string{"WSBRIDGE_AUTH_TIMEOUT": "2"}, nil, "WSBRIDGE_AUTH_TIMEOUT"},
		{"negative auth timeout", map[string]string{"WSBRIDGE_AUTH_TIMEOUT": "-1s"}, nil, "WSBRIDGE_AUTH_TIMEOUT"},
		{"bad size", map[string]string{"WSBRIDGE_MAX_MESSAGE_SIZE": "1MiB"}, nil, "WSBRIDGE_MAX_MESSAGE_SIZE"},
		{"zero size", map[string]string{"WSBRIDGE_MAX_MESSAGE_SIZE": "0"}, nil, "WSBRIDGE_MAX_MESSAGE_SIZE"},
		{"bad prefix", map[string]string{"WSBRIDGE_PREFIX": "ws.>"}, nil, "WSBRIDGE_PREFIX"},
		{"bad level", map[string]string{"WSBRIDGE_LOG_LEVEL": "loud"}, nil, "WSBRIDGE_LOG_LEVEL"},
		{"bad format", map[string]string{"WSBRIDGE_LOG_FORMAT": "xml"}, nil, "WSBRIDGE_LOG_FORMAT"},
		{"two nats auths", map[string]string{"WSBRIDGE_NATS_TOKEN": "t", "WSBRIDGE_NATS_USER": "u"}, nil, "only one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := OptionsFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want ErrConfig mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("OptionsFromEnv: %v", err)
			}
			want := DefaultOptions()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

// FuzzDecodeEvent feeds arbitrary payloads through the decoder and every
// role's parser: none may panic, and what they accept must be usable.
func FuzzDecodeEvent(f *testing.F) {
	for _, s := range []string{
		`{"requestContext":{"serviceId":"s","sourceIp":"1.2.3.4"},"websocket":{"action":"connecting","secConnectionID":"a+/=","secWebSocketProtocol":"a, b","secWebSocketExtensions":"x; y, z"}}`,
		`{"websocket":{"action":"data send","secConnectionID":"a","dataType":"binary","data":"AAE="}}`,
		`{"websocket":{"action":"data recv","secConnectionID":"a","dataType":"text","data":"hi"}}`,
		`{"websocket":{"action":"closing","secConnectionID":"a"}}`,
		`{"requestContext":null}`, `{}`, `null`, `[]`, `{"websocket":{"secConnectionID":"\u0000"}}`,
	} {
		f.Add([]byte(s))
	}
	const max = 64
	f.Fuzz(func(t *testing.T, payload []byte) {
		ev, err := DecodeEvent(payload)
		if err != nil {
			if !errors.Is(err, ErrBadEvent) {
				t.Fatalf("DecodeEvent error %v is not ErrBadEvent", err)
			}
			return
		}
		if ce, err := parseConnect(ev, time.Unix(0, 0)); err == nil {
			if ce.ConnectionID == "" || ce.Token != subjects.Token(ce.ConnectionID) {
				t.Fatalf("connect event id %q token %q", ce.ConnectionID, ce.Token)
			}
			if back, err := subjects.ConnID(ce.Token); err != nil || back != ce.ConnectionID {
				t.Fatalf("token %q does not decode to %q: %v", ce.Token, ce.ConnectionID, err)
			}
			for _, p := range ce.Protocols {
				if p == "" || p != strings.TrimSpace(p) || strings.Contains(p, ",") {
					t.Fatalf("protocol %q from %q", p, ev.WebSocket.SecWebSocketProtocol)
				}
			}
			for _, x := range ce.Extensions {
				if x == "" || x != strings.TrimSpace(x) || strings.ContainsAny(x, ",;") {
					t.Fatalf("extension %q from %q", x, ev.WebSocket.SecWebSocketExtensions)
				}
			}
			if _, err := json.Marshal(ce); err != nil {
				t.Fatalf("connect event does not encode: %v", err)
			}
		} else {
			var re *rejectError
			if !errors.As(err, &re) && !errors.Is(err, ErrBadEvent) {
				t.Fatalf("parseConnect error %v is neither a rejection nor ErrBadEvent", err)
			}
			if code := errNo(err); code == 0 {
				t.Fatalf("rejection %v has errNo 0", err)
			}
		}
		if m, err := parseData(ev, max); err == nil {
			if len(m.data) > max {
				t.Fatalf("accepted %d bytes over the limit %d", len(m.data), max)
			}
			switch m.dataType {
			case subjects.DataText:
				if string(m.data) != ev.WebSocket.Data {
					t.Fatalf("text %q altered to %q", ev.WebSocket.Data, m.data)
				}
			case subjects.DataBinary:
				if again, _ := base64.StdEncoding.DecodeString(ev.WebSocket.Data); !bytes.Equal(again, m.data) {
					t.Fatalf("binary %q decoded to %x", ev.WebSocket.Data, m.data)
				}
			default:
				t.Fatalf("data type %q", m.dataType)
			}
			if err := checkConnID(m.connID); err != nil || m.token != subjects.Token(m.connID) {
				t.Fatalf("accepted id %q token %q: %v", m.connID, m.token, err)
			}
		} else if !errors.Is(err, ErrBadEvent) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("parseData error %v is neither ErrBadEvent nor ErrTooLarge", err)
		} else if !utf8.ValidString(err.Error()) && utf8.Valid(payload) {
			t.Fatalf("error message is not UTF-8: %q", err)
		}
		if id, err := parseClosing(ev); err == nil && checkConnID(id) != nil {
			t.Fatalf("accepted closing id %q", id)
		}
	})
}
