package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestGatewayRequestContextFlags: the connect events of `wsbridge gateway`
// carry --service-id and --stage in their requestContext, and by default
// name wsbridge's edge, not an emulator.
func TestGatewayRequestContextFlags(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	for _, tc := range []struct {
		args              []string
		wantSvc, wantStge string
	}{
		{nil, gateway.DefaultServiceID, gateway.DefaultStage},
		{[]string{"--service-id", "service-0ck2a1q4", "--stage", "prepub"}, "service-0ck2a1q4", "prepub"},
	} {
		connects := make(chan *nats.Msg, 4)
		sub, err := nc.ChanSubscribe("ws.in.connect.*", connects)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		pr, pw := io.Pipe()
		code := make(chan int, 1)
		go func() {
			code <- run(ctx, append([]string{"gateway", "--nats-url", s.ClientURL(), "--addr", "127.0.0.1:0",
				"--http-addr", "", "--log-level", "warn"}, tc.args...), pw, io.Discard)
			pw.Close()
		}()
		ws := ""
		sc := bufio.NewScanner(pr)
		for ws == "" && sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "websocket" {
				ws = f[1]
			}
		}
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		if ws == "" {
			t.Fatalf("gateway %v printed no websocket URL", tc.args)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		c, _, err := websocket.Dial(wctx, ws, nil)
		if err != nil {
			t.Fatalf("dial %s: %v", ws, err)
		}
		var ev struct {
			RequestContext struct {
				ServiceID string `json:"serviceId"`
				Stage     string `json:"stage"`
			} `json:"requestContext"`
		}
		select {
		case m := <-connects:
			if err := json.Unmarshal(m.Data, &ev); err != nil {
				t.Fatalf("connect event %s: %v", m.Data, err)
			}
		case <-wctx.Done():
			t.Fatalf("gateway %v: no connect event", tc.args)
		}
		if rc := ev.RequestContext; rc.ServiceID != tc.wantSvc || rc.Stage != tc.wantStge {
			t.Errorf("gateway %v: requestContext serviceId %q stage %q, want %q %q", tc.args, rc.ServiceID, rc.Stage, tc.wantSvc, tc.wantStge)
		}
		c.CloseNow()
		wcancel()
		cancel()
		if got := <-code; got != 0 {
			t.Errorf("gateway %v exited %d, want 0", tc.args, got)
		}
		_ = sub.Unsubscribe()
	}
	if strings.Contains(gateway.DefaultServiceID, "emulator") {
		t.Errorf("default serviceId %q names an emulator", gateway.DefaultServiceID)
	}
}
