package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/tencentyun/scf-go-lib/functioncontext"

	"github.com/wsbridge/wsbridge/test/buildtest"
)

// buildEchoFn builds internal/echofn, a real SCF Go function served by
// scf-go-lib's runtime.
func buildEchoFn(t *testing.T) string {
	t.Helper()
	const pkg = "gateway/internal/echofn"
	return buildtest.Binary(buildtest.BuildT(t, pkg), pkg)
}

func startEchoFn(t *testing.T, bin string) *RPCInvoker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	inv, err := StartBinary(ctx, bin, []string{"FUNCTION_NAME=echofn"})
	if err != nil {
		t.Fatalf("StartBinary: %v", err)
	}
	t.Cleanup(func() {
		if err := inv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return inv
}

func TestRPCInvoker(t *testing.T) {
	inv := startEchoFn(t, buildEchoFn(t))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = functioncontext.NewContext(ctx, &functioncontext.FunctionContext{RequestID: "req-1", FunctionName: "register"})
	event := `{"websocket":{"action":"connecting","secConnectionID":"a+b/c==","secWebSocketProtocol":"x,y"}}`
	out, err := inv.Invoke(ctx, []byte(event))
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	var got struct {
		ErrNo     int `json:"errNo"`
		WebSocket struct {
			SecWebSocketProtocol string `json:"secWebSocketProtocol"`
		} `json:"websocket"`
		RequestID    string          `json:"requestId"`
		FunctionName string          `json:"functionName"`
		HasDeadline  bool            `json:"hasDeadline"`
		Event        json.RawMessage `json:"event"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("reply %s: %v", out, err)
	}
	if got.RequestID != "req-1" || got.FunctionName != "register" || !got.HasDeadline {
		t.Errorf("function saw request id %q, name %q, deadline %v; want req-1, register, true",
			got.RequestID, got.FunctionName, got.HasDeadline)
	}
	if string(got.Event) != event {
		t.Errorf("function saw event %s, want %s", got.Event, event)
	}
	if got.WebSocket.SecWebSocketProtocol != "x" {
		t.Errorf("reply protocol %q, want x", got.WebSocket.SecWebSocketProtocol)
	}

	_, err = inv.Invoke(ctx, []byte(`{"websocket":{"action":"data recv","secConnectionID":"x","dataType":"text","data":"fail"}}`))
	if err == nil || !strings.Contains(err.Error(), "asked to fail") {
		t.Errorf("Invoke of a failing function: %v, want the function's error", err)
	}

	// A second client of the same process, as the gateway's three roles
	// would be in a three-function deployment pointed at one address.
	dctx, dcancel := context.WithTimeout(context.Background(), waitTimeout)
	defer dcancel()
	other, err := DialRPC(dctx, inv.Addr())
	if err != nil {
		t.Fatalf("DialRPC: %v", err)
	}
	if _, err := other.Invoke(context.Background(), []byte(`{}`)); err != nil {
		t.Errorf("Invoke through DialRPC: %v", err)
	}
	other.Close()

	if err := inv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := inv.Invoke(context.Background(), []byte(`{}`)); err == nil {
		t.Error("Invoke after Close succeeded, want an error")
	}
	if err := inv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDialRPCNobodyThere(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = DialRPC(ctx, "127.0.0.1:"+itoa(port))
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("DialRPC to a closed port: %v, want not ready (deadline exceeded)", err)
	}
}

func TestStartBinaryThatExits(t *testing.T) {
	sh, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err = StartBinary(ctx, sh, nil)
	if !errors.Is(err, ErrFunctionExited) {
		t.Errorf("StartBinary of a process that exits: %v, want ErrFunctionExited", err)
	}
}

// TestGatewayOverRPC runs the emulator with a real function binary in all
// three roles, as the single websocket function is deployed.
func TestGatewayOverRPC(t *testing.T) {
	inv := startEchoFn(t, buildEchoFn(t))
	e := newEnv(t, nil, func(o *Options) { o.Register, o.Transfer, o.Cleanup = inv, inv, inv })
	c := e.dial(t, &websocket.DialOptions{Subprotocols: []string{"chat.v1", "chat.v0"}})
	if got := c.Subprotocol(); got != "chat.v1" {
		t.Errorf("subprotocol %q, want chat.v1", got)
	}
	if err := c.Write(context.Background(), websocket.MessageText, []byte("fail")); err != nil {
		t.Fatal(err)
	}
	if got := closeStatus(t, c); got != websocket.StatusInternalError {
		t.Errorf("close status %v after a failed transfer, want 1011", got)
	}
	waitFor(t, "cleanup over RPC", func() bool { return e.g.Stats().Cleanups == 1 })
	if s := e.g.Stats(); s.InvokeErrors != 1 || s.Invocations != 3 {
		t.Errorf("stats: %d invocations, %d failed; want 3 and 1", s.Invocations, s.InvokeErrors)
	}
}

// TestStartBinaryPortTaken: a function whose port was taken between the
// gateway choosing it and the function binding it (another socket of a
// busy machine) is started again on another port, rather than failing the
// gateway's start.
func TestStartBinaryPortTaken(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "taken")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	inv, err := StartBinary(ctx, buildEchoFn(t), []string{"FUNCTION_NAME=echofn", "ECHOFN_PORT_TAKEN_ONCE=" + marker})
	if err != nil {
		t.Fatalf("StartBinary: %v", err)
	}
	defer inv.Close()
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the first start did not find its port taken: %v", err)
	}
	if err := inv.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}
