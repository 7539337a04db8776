package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/tencentyun/scf-go-lib/functioncontext"
)

// Invoker invokes one SCF function with a JSON event and returns its JSON
// answer. It has the shape of scf-go-lib's cloudfunction.Handler, so an
// in-process handler plugs in as is. The gateway calls it with a context that
// carries a functioncontext.FunctionContext (RequestID, FunctionName) and the
// function timeout as its deadline, as the SCF runtime does.
//
// An error is a failed invocation (SCF's non-200): the gateway rejects the
// upgrade, closes the client, or logs, depending on the role.
type Invoker interface {
	Invoke(ctx context.Context, payload []byte) ([]byte, error)
}

// InvokerFunc adapts a function to Invoker.
type InvokerFunc func(ctx context.Context, payload []byte) ([]byte, error)

// Invoke calls f.
func (f InvokerFunc) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return f(ctx, payload)
}

// Typed adapts a typed handler, as written for cloudfunction.Start, to
// Invoker: the event is JSON-decoded into In and the answer JSON-encoded,
// the way the SCF Go runtime does it.
func Typed[In, Out any](f func(context.Context, In) (Out, error)) Invoker {
	return InvokerFunc(func(ctx context.Context, payload []byte) ([]byte, error) {
		var in In
		if err := json.Unmarshal(payload, &in); err != nil {
			return nil, fmt.Errorf("decode event: %w", err)
		}
		out, err := f(ctx, in)
		if err != nil {
			return nil, err
		}
		return json.Marshal(out)
	})
}

// memoryLimitMB is what the emulator tells functions they have; SCF's
// smallest common size.
const memoryLimitMB = 128

// invoke calls inv as SCF would: a fresh request id, the function timeout as
// the deadline, and a panic turned into a failed invocation rather than a
// crashed gateway.
func (g *Gateway) invoke(ctx context.Context, role string, inv Invoker, event any) (out []byte, err error) {
	payload, err := json.Marshal(event)
	if err != nil {
		return nil, fmt.Errorf("encode %s event: %w", role, err)
	}
	ctx, cancel := context.WithTimeout(ctx, g.opts.FunctionTimeout)
	defer cancel()
	ctx = functioncontext.NewContext(ctx, &functioncontext.FunctionContext{
		RequestID:       newRequestID(),
		FunctionName:    role,
		FunctionVersion: "$LATEST",
		Namespace:       "default",
		MemoryLimitInMb: memoryLimitMB,
		TimeLimitInMs:   int32(g.opts.FunctionTimeout / time.Millisecond),
	})
	defer func() {
		if p := recover(); p != nil {
			g.log.Error("function panicked", "function", role, "panic", p, "stack", string(debug.Stack()))
			out, err = nil, fmt.Errorf("%s function panicked: %v", role, p)
		}
	}()
	g.stats.invocations.Add(1)
	start := time.Now()
	out, err = inv.Invoke(ctx, payload)
	g.m.invocations.WithLabelValues(role).Observe(time.Since(start).Seconds())
	if err != nil {
		g.stats.invokeErrors.Add(1)
		return nil, fmt.Errorf("%s function: %w", role, err)
	}
	return out, nil
}
