// Package scfrpc invokes SCF Go functions the way the SCF runtime does: over
// net/rpc, calling Function.Ping and Function.Invoke of a process started by
// scf-go-lib's cloudfunction.Start on $_LAMBDA_SERVER_PORT. It is the one
// SCF client of wsbridge: the gateway invokes function binaries through it
// (gateway.RPCInvoker adds the process around it), and tests and benchmarks
// drive the real binaries with it.
//
// It is also the server side of the function binaries (Start): under SCF
// scf-go-lib's runtime, unchanged; run by a wsbridge process (Handover), the
// same service on a loopback listener that process opened, because
// scf-go-lib listens on every interface and its net/rpc port has no
// authentication.
package scfrpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"sync"
	"time"

	"github.com/tencentyun/scf-go-lib/cloudfunction/messages"
	"github.com/tencentyun/scf-go-lib/functioncontext"
)

// DefaultTimeout is the invocation deadline when ctx has none: SCF's default
// function timeout.
const DefaultTimeout = 3 * time.Second

// MemoryLimitMB is the memory a function is told it has; SCF's smallest
// common size.
const MemoryLimitMB = 128

// maxReadyInterval caps the pause between pings in WaitReady.
const maxReadyInterval = 200 * time.Millisecond

// FunctionError is an error the function returned (or a panic it recovered),
// as SCF reports it.
type FunctionError struct {
	RequestID  string
	Message    string
	Type       string
	ShouldExit bool // the function asks to be restarted (after a panic)
}

// Error names the invocation, the function's error type and message.
func (e *FunctionError) Error() string {
	return fmt.Sprintf("invocation %s failed: %s: %s", e.RequestID, e.Type, e.Message)
}

// Option adjusts a Client.
type Option func(*Client)

// Name sets the FunctionName sent when the context carries none (default
// "function").
func Name(name string) Option { return func(c *Client) { c.name = name } }

// Client is a net/rpc connection to one function process. It is safe for
// concurrent use; concurrent invocations share the connection, and a broken
// connection is dialed again on the next call.
type Client struct {
	addr string
	name string

	mu sync.Mutex
	rc *rpc.Client
}

func newClient(addr string, opts []Option) *Client {
	c := &Client{addr: addr, name: "function"}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Dial connects to a function at addr (host:port).
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	c := newClient(addr, opts)
	if _, err := c.conn(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// WaitReady pings the function at addr until it answers or ctx ends, the
// pause between tries growing from interval to 200ms: a just-started
// process needs a moment to listen.
func WaitReady(ctx context.Context, addr string, interval time.Duration, opts ...Option) (*Client, error) {
	c := newClient(addr, opts)
	for {
		err := c.Ping(ctx)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			c.Close()
			if cause := context.Cause(ctx); cause != ctx.Err() {
				return nil, cause
			}
			return nil, fmt.Errorf("scfrpc: function at %s not ready: %w (last error: %v)", addr, ctx.Err(), err)
		case <-time.After(interval):
		}
		interval = min(interval*2, max(interval, maxReadyInterval))
	}
}

// Addr returns the function's address.
func (c *Client) Addr() string { return c.addr }

// Close closes the connection; a later call dials again.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rc == nil {
		return nil
	}
	err := c.rc.Close()
	c.rc = nil
	return err
}

// Ping calls Function.Ping.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, "Function.Ping", &messages.PingRequest{}, &messages.PingResponse{})
}

// Invoke calls Function.Invoke with payload, as SCF does. The request id,
// function name, namespace, version and time limit come from ctx's
// functioncontext when present (otherwise a fresh UUID-shaped id and the
// client's name); the deadline is ctx's or DefaultTimeout from now. A
// function error is a *FunctionError.
func (c *Client) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return c.InvokeID(ctx, payload, "")
}

// InvokeID is Invoke with an explicit SCF request id ("" = from ctx or new).
func (c *Client) InvokeID(ctx context.Context, payload []byte, requestID string) ([]byte, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	req := &messages.InvokeRequest{
		Payload:         payload,
		RequestId:       NewRequestID(),
		Deadline:        messages.InvokeRequest_Timestamp{Seconds: deadline.Unix(), Nanos: int64(deadline.Nanosecond())},
		FunctionName:    c.name,
		FunctionVersion: "$LATEST",
		Namespace:       "default",
		MemoryLimitInMb: MemoryLimitMB,
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
	if requestID != "" {
		req.RequestId = requestID
	}
	var resp messages.InvokeResponse
	if err := c.call(ctx, "Function.Invoke", req, &resp); err != nil {
		return nil, err
	}
	if e := resp.Error; e != nil {
		return nil, &FunctionError{RequestID: req.RequestId, Message: e.Message, Type: e.Type, ShouldExit: e.ShouldExit}
	}
	return resp.Payload, nil
}

// conn returns the shared RPC client, dialing when there is none (first use,
// or the function process dropped the connection).
func (c *Client) conn(ctx context.Context) (*rpc.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rc != nil {
		return c.rc, nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, fmt.Errorf("scfrpc: dial %s: %w", c.addr, err)
	}
	c.rc = rpc.NewClient(conn)
	return c.rc, nil
}

// drop forgets a broken connection so the next call dials again.
func (c *Client) drop(rc *rpc.Client) {
	c.mu.Lock()
	if c.rc == rc {
		c.rc = nil
	}
	c.mu.Unlock()
	_ = rc.Close()
}

// call runs one RPC, giving up (without cancelling the remote side, which
// net/rpc cannot do) when ctx ends. A transport error drops the connection;
// an error the function's server answered does not.
func (c *Client) call(ctx context.Context, method string, args, reply any) error {
	rc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	call := rc.Go(method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
	case <-ctx.Done():
		return fmt.Errorf("scfrpc: %s: %w", method, ctx.Err())
	}
	if call.Error != nil {
		var se rpc.ServerError
		if errors.Is(call.Error, rpc.ErrShutdown) || !errors.As(call.Error, &se) {
			c.drop(rc)
		}
		return fmt.Errorf("scfrpc: %s: %w", method, call.Error)
	}
	return nil
}

// NewRequestID returns a random UUID-shaped id, like SCF request ids.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
