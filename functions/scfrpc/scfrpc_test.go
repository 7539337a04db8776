package scfrpc

import (
	"context"
	"errors"
	"net"
	"net/rpc"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tencentyun/scf-go-lib/cloudfunction/messages"
	"github.com/tencentyun/scf-go-lib/functioncontext"
)

// waitTimeout bounds each call; a safety net against hangs, not a speed check.
const waitTimeout = 30 * time.Second

// Function is served with net/rpc as scf-go-lib's runtime serves a Go
// function: it records the requests and answers by payload.
type Function struct {
	mu   sync.Mutex
	reqs []messages.InvokeRequest
}

func (f *Function) Ping(_ *messages.PingRequest, _ *messages.PingResponse) error { return nil }

func (f *Function) Invoke(req *messages.InvokeRequest, resp *messages.InvokeResponse) error {
	f.mu.Lock()
	f.reqs = append(f.reqs, *req)
	f.mu.Unlock()
	switch string(req.Payload) {
	case "fail":
		resp.Error = &messages.InvokeResponse_Error{Message: "asked to fail", Type: "errorString"}
	case "rpc-error":
		return errors.New("server side error")
	default:
		resp.Payload = req.Payload
	}
	return nil
}

func (f *Function) last() messages.InvokeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[len(f.reqs)-1]
}

// serve runs fn on a loopback listener until the test ends.
func serve(t *testing.T, fn any) string {
	t.Helper()
	srv := rpc.NewServer()
	if err := srv.RegisterName("Function", fn); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go srv.Accept(ln)
	return ln.Addr().String()
}

func TestInvoke(t *testing.T) {
	fn := &Function{}
	addr := serve(t, fn)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := WaitReady(ctx, addr, time.Millisecond, Name("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	out, err := c.Invoke(ctx, []byte(`{"a":1}`))
	if err != nil || string(out) != `{"a":1}` {
		t.Fatalf("Invoke = %s, %v; want the payload back", out, err)
	}
	req := fn.last()
	if req.FunctionName != "echo" || req.Namespace != "default" || req.FunctionVersion != "$LATEST" ||
		req.MemoryLimitInMb != MemoryLimitMB || req.TimeLimitInMs <= 0 || len(req.RequestId) != 36 {
		t.Errorf("request %+v: want the client's name, defaults, a time limit and a UUID-shaped id", req)
	}

	fctx := functioncontext.NewContext(ctx, &functioncontext.FunctionContext{RequestID: "req-1", FunctionName: "register", Namespace: "ns", TimeLimitInMs: 1234})
	if _, err := c.Invoke(fctx, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if req := fn.last(); req.RequestId != "req-1" || req.FunctionName != "register" || req.Namespace != "ns" || req.TimeLimitInMs != 1234 {
		t.Errorf("request %+v: want the functioncontext's id, name, namespace and time limit", req)
	}
	if _, err := c.InvokeID(fctx, []byte(`{}`), "explicit"); err != nil || fn.last().RequestId != "explicit" {
		t.Errorf("InvokeID: %v, request id %q; want explicit", err, fn.last().RequestId)
	}

	// No deadline: DefaultTimeout from now.
	if _, err := c.Invoke(context.Background(), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	dl := time.Unix(fn.last().Deadline.Seconds, fn.last().Deadline.Nanos)
	if until := time.Until(dl); until <= 0 || until > DefaultTimeout {
		t.Errorf("deadline %v from now, want within DefaultTimeout", until)
	}

	_, err = c.Invoke(ctx, []byte("fail"))
	var fe *FunctionError
	if !errors.As(err, &fe) || fe.Message != "asked to fail" || !strings.Contains(err.Error(), fe.RequestID) {
		t.Errorf("Invoke of a failing function: %v, want a *FunctionError naming the request", err)
	}
}

// TestConnection checks what happens to the shared connection: an error the
// function's server answered keeps it, Close or a broken transport drops it
// and the next call dials again.
func TestConnection(t *testing.T) {
	addr := serve(t, &Function{})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	first := c.rc
	if _, err := c.Invoke(ctx, []byte("rpc-error")); err == nil || c.rc != first {
		t.Errorf("server error %v: connection replaced, want it kept", err)
	}
	c.Close()
	if _, err := c.Invoke(ctx, []byte("{}")); err != nil || c.rc == nil || c.rc == first {
		t.Errorf("Invoke after Close: %v, want a new connection", err)
	}

	// A peer that hangs up: the call fails and the connection is dropped.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	h, err := Dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Ping(ctx); err == nil || h.rc != nil {
		t.Errorf("Ping of a peer that hangs up: %v, connection kept %v; want an error and no connection", err, h.rc != nil)
	}
}

func TestWaitReadyNobodyThere(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := WaitReady(ctx, addr, time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("WaitReady on a closed port: %v, want not ready (deadline exceeded)", err)
	}
	cctx, stop := context.WithCancelCause(context.Background())
	why := errors.New("the process exited")
	stop(why)
	if _, err := WaitReady(cctx, addr, time.Millisecond); !errors.Is(err, why) {
		t.Errorf("WaitReady with a cancel cause: %v, want the cause", err)
	}
}
