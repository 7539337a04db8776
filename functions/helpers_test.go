package functions_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tencentyun/scf-go-lib/functioncontext"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// startNATS runs an embedded JetStream server for one test.
func startNATS(t testing.TB) *server.Server {
	t.Helper()
	return natstest.Start(t)
}

// observer is the test's own view of NATS: what the functions stored.
type observer struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	names subjects.Names
}

func observe(t testing.TB, s *server.Server, provision bool) *observer {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	o := &observer{nc: nc, js: js, names: subjects.MustNew("ws")}
	if provision {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := subjects.Provision(ctx, js, o.names, subjects.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return o
}

// stored returns every message in WS_IN, oldest first.
func (o *observer) stored(t testing.TB) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := o.js.Stream(ctx, o.names.StreamIn())
	if err != nil {
		t.Fatalf("stream %s: %v", o.names.StreamIn(), err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

// record returns the registry record of token, or nil when there is none.
func (o *observer) record(t testing.TB, token string) *subjects.ConnectEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := o.js.KeyValue(ctx, o.names.Bucket())
	if err != nil {
		t.Fatalf("bucket: %v", err)
	}
	e, err := kv.Get(ctx, token)
	if err != nil {
		return nil
	}
	var ce subjects.ConnectEvent
	if err := json.Unmarshal(e.Value(), &ce); err != nil {
		t.Fatalf("registry record %s: %v", e.Value(), err)
	}
	return &ce
}

// newFunctions returns functions that dial the server lazily, with opts
// adjusted by tune.
func newFunctions(t testing.TB, url string, tune func(*functions.Options)) *functions.Functions {
	t.Helper()
	opts := functions.DefaultOptions()
	opts.NATS.URL = url
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if tune != nil {
		tune(&opts)
	}
	f, err := functions.New(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// invocation returns a context like the one cloudfunction gives a handler:
// a deadline and the SCF request id.
func invocation(t testing.TB, requestID string, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return functioncontext.NewContext(ctx, &functioncontext.FunctionContext{RequestID: requestID})
}

// reply decodes a registration reply.
func reply(t testing.TB, raw []byte) subjects.GatewayReply {
	t.Helper()
	var r subjects.GatewayReply
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("reply %s: %v", raw, err)
	}
	return r
}

const connID = "kGcK4x/+Vf1e7aT3Nd2u1A=="

func connectEvent(id, protocols string) string {
	ws := map[string]string{"action": "connecting", "secConnectionID": id}
	if protocols != "" {
		ws["secWebSocketProtocol"] = protocols
	}
	b, _ := json.Marshal(map[string]any{
		"requestContext": map[string]any{"serviceId": "service-1", "path": "/ws", "httpMethod": "GET", "requestId": "gw-req",
			"identity": map[string]any{}, "sourceIp": "10.0.0.1", "stage": "release", "websocketEnable": true},
		"websocket": ws,
	})
	return string(b)
}

func dataEvent(id, dataType, data string) string {
	b, _ := json.Marshal(map[string]any{"websocket": map[string]string{"action": "data send", "secConnectionID": id, "dataType": dataType, "data": data}})
	return string(b)
}

func closingEvent(id string) string {
	b, _ := json.Marshal(map[string]any{"websocket": map[string]string{"action": "closing", "secConnectionID": id}})
	return string(b)
}
