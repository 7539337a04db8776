package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/tencentyun/scf-go-lib/cloudfunction/messages"
	"github.com/tencentyun/scf-go-lib/functioncontext"
)

// ErrFunctionExited reports an invocation of a function process that is no
// longer running.
var ErrFunctionExited = errors.New("function process exited")

// readyTimeout bounds the wait for a function's RPC port when the caller's
// context has no deadline.
const readyTimeout = 10 * time.Second

// RPCInvoker invokes a function over the SCF Go runtime's protocol: net/rpc
// Function.Invoke with messages.InvokeRequest, exactly as SCF calls a Go
// function. A response with a non-nil Error is a failed invocation. It is
// safe for concurrent use; calls share one connection.
type RPCInvoker struct {
	addr string
	name string // FunctionName sent when the context carries none

	mu     sync.Mutex
	client *rpc.Client

	cmd     *exec.Cmd // nil when dialed
	exited  chan struct{}
	exitErr error

	closeOnce sync.Once
}

// DialRPC connects to a function already serving on addr (host:port),
// waiting until it answers Function.Ping or ctx ends (at most 10s when ctx
// has no deadline).
func DialRPC(ctx context.Context, addr string) (*RPCInvoker, error) {
	r := &RPCInvoker{addr: addr, name: "function"}
	if err := r.waitReady(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// StartBinary starts a function binary the way SCF does, with
// _LAMBDA_SERVER_PORT set to a free port, and waits until it answers
// Function.Ping (ctx bounds only this wait; at most 10s when ctx has no
// deadline). env is added to the current environment. The process's output
// goes to this process's stderr. Close kills the process.
func StartBinary(ctx context.Context, path string, env []string) (*RPCInvoker, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path)
	cmd.Env = append(append(os.Environ(), env...), "_LAMBDA_SERVER_PORT="+strconv.Itoa(port))
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = time.Second
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start function %s: %w", path, err)
	}
	r := &RPCInvoker{
		addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		name:   filepath.Base(path),
		cmd:    cmd,
		exited: make(chan struct{}),
	}
	go func() {
		r.exitErr = cmd.Wait()
		close(r.exited)
	}()
	if err := r.waitReady(ctx); err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("start function %s: %w", path, err)
	}
	return r, nil
}

// Addr is the function's RPC address.
func (r *RPCInvoker) Addr() string { return r.addr }

// freePort asks the kernel for a port that is free now. Another process may
// take it before the function binds it; the wait for Ping then fails with a
// clear error rather than talking to a stranger for long.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// processExited reports the process's end, if it has ended.
func (r *RPCInvoker) processExited() error {
	if r.exited == nil {
		return nil
	}
	select {
	case <-r.exited:
		return fmt.Errorf("%w: %v", ErrFunctionExited, r.exitErr)
	default:
		return nil
	}
}

func (r *RPCInvoker) waitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	wait := 10 * time.Millisecond
	var last error
	for {
		if err := r.processExited(); err != nil {
			return err
		}
		last = r.ping(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("function at %s not ready: %w (last error: %v)", r.addr, ctx.Err(), last)
		case <-time.After(wait):
		}
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// Ping checks that the function answers Function.Ping.
func (r *RPCInvoker) Ping(ctx context.Context) error { return r.ping(ctx) }

func (r *RPCInvoker) ping(ctx context.Context) error {
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	return r.call(ctx, c, "Function.Ping", &messages.PingRequest{}, &messages.PingResponse{})
}

// conn returns the shared RPC client, dialing when there is none (first use,
// or the function process dropped the connection).
func (r *RPCInvoker) conn(ctx context.Context) (*rpc.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client != nil {
		return r.client, nil
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", r.addr)
	if err != nil {
		return nil, fmt.Errorf("dial function at %s: %w", r.addr, err)
	}
	r.client = rpc.NewClient(nc)
	return r.client, nil
}

// drop forgets a broken client so the next call redials.
func (r *RPCInvoker) drop(c *rpc.Client) {
	r.mu.Lock()
	if r.client == c {
		r.client = nil
	}
	r.mu.Unlock()
	_ = c.Close()
}

func (r *RPCInvoker) call(ctx context.Context, c *rpc.Client, method string, args, reply any) error {
	call := c.Go(method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
	if call.Error != nil {
		if errors.Is(call.Error, rpc.ErrShutdown) || !isServerError(call.Error) {
			r.drop(c)
		}
		if err := r.processExited(); err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		return fmt.Errorf("%s: %w", method, call.Error)
	}
	return nil
}

func isServerError(err error) bool {
	var se rpc.ServerError
	return errors.As(err, &se)
}

// Invoke sends one invocation. The request id, function name and deadline
// come from ctx as the gateway sets them (functioncontext and
// ctx.Deadline); a missing deadline means DefaultFunctionTimeout.
func (r *RPCInvoker) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultFunctionTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	req := &messages.InvokeRequest{
		Payload:         payload,
		RequestId:       newRequestID(),
		Deadline:        messages.InvokeRequest_Timestamp{Seconds: deadline.Unix(), Nanos: int64(deadline.Nanosecond())},
		FunctionName:    r.name,
		FunctionVersion: "$LATEST",
		Namespace:       "default",
		MemoryLimitInMb: memoryLimitMB,
		TimeLimitInMs:   int32(time.Until(deadline) / time.Millisecond),
	}
	if fc, ok := functioncontext.FromContext(ctx); ok {
		if fc.RequestID != "" {
			req.RequestId = fc.RequestID
		}
		if fc.FunctionName != "" {
			req.FunctionName = fc.FunctionName
		}
		if fc.Namespace != "" {
			req.Namespace = fc.Namespace
		}
		if fc.FunctionVersion != "" {
			req.FunctionVersion = fc.FunctionVersion
		}
		if fc.TimeLimitInMs > 0 {
			req.TimeLimitInMs = fc.TimeLimitInMs
		}
	}
	c, err := r.conn(ctx)
	if err != nil {
		return nil, err
	}
	var resp messages.InvokeResponse
	if err := r.call(ctx, c, "Function.Invoke", req, &resp); err != nil {
		return nil, err
	}
	if e := resp.Error; e != nil {
		return nil, fmt.Errorf("invocation %s failed: %s: %s", req.RequestId, e.Type, e.Message)
	}
	return resp.Payload, nil
}

// Close closes the connection and kills the process StartBinary started.
// It is idempotent.
func (r *RPCInvoker) Close() error {
	var err error
	r.closeOnce.Do(func() {
		r.mu.Lock()
		if r.client != nil {
			_ = r.client.Close()
			r.client = nil
		}
		r.mu.Unlock()
		if r.cmd == nil {
			return
		}
		if kerr := r.cmd.Process.Kill(); kerr != nil && !errors.Is(kerr, os.ErrProcessDone) {
			err = fmt.Errorf("kill function %s: %w", r.name, kerr)
		}
		select {
		case <-r.exited:
		case <-time.After(5 * time.Second):
			err = errors.Join(err, fmt.Errorf("function %s did not exit after kill", r.name))
		}
	})
	return err
}
