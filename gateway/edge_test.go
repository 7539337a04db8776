package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestEdgeStartSweepsEarlierLife: an instance restarting under its old id
// (a host that rebooted) announces the records its earlier life left as
// lost, once each, and so those of instances that vanished while none ran;
// records of live instances and of API Gateway stay.
func TestEdgeStartSweepsEarlierLife(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	names := subjects.MustNew("ws")
	if err := subjects.Provision(ctx, js, names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	reg, _ := js.KeyValue(ctx, names.Bucket())
	inst, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Put(ctx, "edge-y", []byte(`{"id":"edge-y","pushUrl":"http://127.0.0.1:1/push"}`)); err != nil {
		t.Fatal(err)
	}
	// edge-x restarted with records of its earlier life; edge-z vanished.
	// Its earlier life's own record may still be there too.
	if _, err := inst.Put(ctx, "edge-x", []byte(`{"id":"edge-x","pushUrl":"http://127.0.0.1:1/push"}`)); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	for _, who := range []string{"edge-x", "edge-y", "edge-z"} {
		tokens[who] = subjects.Token(subjects.NewEdgeConnID(who))
	}
	tokens["apigw"] = subjects.Token("L5bZ4yiH7c2a+/==")
	for _, tok := range tokens {
		if _, err := reg.Put(ctx, tok, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	discs := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(names.InboundKind(subjects.KindDisconnect), discs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	serveAll(t, func(o *Options) { o.NATS, o.InstanceID, o.PushURL = nc, "edge-x", "http://127.0.0.1:1/push" })

	got := map[string]string{}
	for len(got) < 2 {
		select {
		case m := <-discs:
			var d subjects.DisconnectEvent
			_ = json.Unmarshal(m.Data, &d)
			got[d.Token] = d.Reason
			if want := d.Reason + "-" + d.Token; m.Header.Get(subjects.HeaderMsgID) != want {
				t.Errorf("Nats-Msg-Id %q, want %q", m.Header.Get(subjects.HeaderMsgID), want)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("disconnect events %v, want lost for edge-x's and edge-z's records", got)
		}
	}
	for _, who := range []string{"edge-x", "edge-z"} {
		if got[tokens[who]] != subjects.ReasonLost {
			t.Errorf("%s's record: %q, want lost", who, got[tokens[who]])
		}
		if _, err := reg.Get(ctx, tokens[who]); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("%s's record: %v, want deleted", who, err)
		}
	}
	for _, who := range []string{"edge-y", "apigw"} {
		if _, err := reg.Get(ctx, tokens[who]); err != nil {
			t.Errorf("%s's record: %v, want kept", who, err)
		}
	}
	// Then this life advertises itself.
	waitFor(t, "edge-x to advertise this life", func() bool {
		e, err := inst.Get(ctx, "edge-x")
		var rec subjects.Instance
		return err == nil && json.Unmarshal(e.Value(), &rec) == nil && !rec.StartedAt.IsZero()
	})
}

// TestReadyz: ready while NATS is connected and the functions answer; not
// once NATS is gone; /healthz regardless.
func TestReadyz(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s, nats.MaxReconnects(-1))
	js, _ := jetstream.New(nc)
	if err := subjects.Provision(context.Background(), js, subjects.MustNew("ws"), subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	var fnDown atomic.Bool
	srv := serveAll(t, func(o *Options) {
		o.NATS, o.InstanceID, o.PushURL = nc, "edge-r", "http://127.0.0.1:1/push"
		o.Ready = func(context.Context) error {
			if fnDown.Load() {
				return errors.New("function not answering")
			}
			return nil
		}
	})
	status := func(path string) int {
		resp, err := http.Get("http://" + srv.ops + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor(t, "ready", func() bool { return status("/readyz") == http.StatusOK })
	fnDown.Store(true)
	if got := status("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz with a function down = %d, want 503", got)
	}
	fnDown.Store(false)
	s.Shutdown()
	waitFor(t, "not ready without NATS", func() bool { return status("/readyz") == http.StatusServiceUnavailable })
	if got := status("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", got)
	}
	if !strings.Contains(metricsText(t, srv.ops), "wsbridge_gateway_nats_connected 0") {
		t.Error("nats_connected is not 0 without NATS")
	}
}
