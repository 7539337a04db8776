package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os/exec"
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

// TestStartBinaryOnLoopbackOnly: a function binary the gateway starts
// answers on loopback and on no other address of the host (its net/rpc
// port has no authentication: anyone reaching it could invoke transfer as
// any connection).
func TestStartBinaryOnLoopbackOnly(t *testing.T) {
	inv := startEchoFn(t, buildEchoFn(t))
	host, port, err := net.SplitHostPort(inv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Errorf("function answers on %s, want a loopback address", inv.Addr())
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.IsLoopback() {
			continue
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(n.IP.String(), port), waitTimeout); err == nil {
			c.Close()
			t.Errorf("function started by the gateway accepted a connection on %s port %s", n.IP, port)
		}
	}
	// And it still answers where it was told to.
	if _, err := inv.Invoke(context.Background(), []byte(`{}`)); err != nil {
		t.Errorf("Invoke: %v", err)
	}
}

func TestDialRPCNobodyThere(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = DialRPC(ctx, addr)
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
