// Package scfrpc invokes SCF Go functions the way the SCF runtime does: over
// net/rpc, calling Function.Ping and Function.Invoke of a process started by
// scf-go-lib's cloudfunction.Start on $_LAMBDA_SERVER_PORT. Tests and
// benchmarks use it to drive the real function binaries.
package scfrpc

import (
	"context"
	"fmt"
	"net"
	"net/rpc"
	"time"

	"github.com/nats-io/nuid"
	"github.com/tencentyun/scf-go-lib/cloudfunction/messages"
	"github.com/tencentyun/scf-go-lib/functioncontext"
)

// DefaultTimeout is the invocation deadline when ctx has none: SCF's default
// function timeout.
const DefaultTimeout = 3 * time.Second

// FunctionError is an error the function returned (or a panic it recovered),
// as SCF reports it.
type FunctionError struct {
	Message    string
	Type       string
	ShouldExit bool // the function asks to be restarted (after a panic)
}

// Error reports the function's error type and message.
func (e *FunctionError) Error() string {
	return fmt.Sprintf("function error (%s): %s", e.Type, e.Message)
}

// Client is a net/rpc connection to one function process. It is safe for
// concurrent use; concurrent invocations share the connection.
type Client struct {
	rc   *rpc.Client
	addr string
}

// Dial connects to a function at addr (host:port).
func Dial(ctx context.Context, addr string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("scfrpc: dial %s: %w", addr, err)
	}
	return &Client{rc: rpc.NewClient(conn), addr: addr}, nil
}

// WaitReady dials addr and pings until the function answers or ctx ends,
// retrying every interval: a just-started process needs a moment to listen.
func WaitReady(ctx context.Context, addr string, interval time.Duration) (*Client, error) {
	for {
		c, err := Dial(ctx, addr)
		if err == nil {
			if err = c.Ping(ctx); err == nil {
				return c, nil
			}
			c.Close()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("scfrpc: %s not ready: %w (last error: %v)", addr, ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// Addr returns the function's address.
func (c *Client) Addr() string { return c.addr }

// Close closes the connection.
func (c *Client) Close() error { return c.rc.Close() }

// Ping calls Function.Ping.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, "Function.Ping", &messages.PingRequest{}, &messages.PingResponse{})
}

// Invoke calls Function.Invoke with payload. The request id comes from ctx's
// functioncontext when present, otherwise a fresh one; the deadline is ctx's
// or DefaultTimeout from now. A function error is a *FunctionError.
func (c *Client) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	id := nuid.Next()
	if lc, ok := functioncontext.FromContext(ctx); ok && lc.RequestID != "" {
		id = lc.RequestID
	}
	return c.InvokeID(ctx, payload, id)
}

// InvokeID is Invoke with an explicit SCF request id.
func (c *Client) InvokeID(ctx context.Context, payload []byte, requestID string) ([]byte, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(DefaultTimeout)
	}
	req := &messages.InvokeRequest{
		Payload:   payload,
		RequestId: requestID,
		Deadline:  messages.InvokeRequest_Timestamp{Seconds: dl.Unix(), Nanos: int64(dl.Nanosecond())},
	}
	var resp messages.InvokeResponse
	if err := c.call(ctx, "Function.Invoke", req, &resp); err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, &FunctionError{Message: resp.Error.Message, Type: resp.Error.Type, ShouldExit: resp.Error.ShouldExit}
	}
	return resp.Payload, nil
}

// call runs one RPC, giving up (without cancelling the remote side, which
// net/rpc cannot do) when ctx ends.
func (c *Client) call(ctx context.Context, method string, args, reply any) error {
	call := c.rc.Go(method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		if call.Error != nil {
			return fmt.Errorf("scfrpc: %s: %w", method, call.Error)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("scfrpc: %s: %w", method, ctx.Err())
	}
}
