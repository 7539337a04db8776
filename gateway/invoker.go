package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/tencentyun/scf-go-lib/functioncontext"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/functions/scfrpc"
)

// invoke calls inv as SCF would: a fresh request id, the function timeout as
// the deadline, and a panic turned into a failed invocation rather than a
// crashed gateway.
func (g *Gateway) invoke(ctx context.Context, role string, inv functions.Invoker, event any) (out []byte, err error) {
	payload, err := json.Marshal(event)
	if err != nil {
		return nil, fmt.Errorf("encode %s event: %w", role, err)
	}
	ctx, cancel := context.WithTimeout(ctx, g.opts.FunctionTimeout)
	defer cancel()
	ctx = functioncontext.NewContext(ctx, &functioncontext.FunctionContext{
		RequestID:       scfrpc.NewRequestID(),
		FunctionName:    role,
		FunctionVersion: "$LATEST",
		Namespace:       "default",
		MemoryLimitInMb: scfrpc.MemoryLimitMB,
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
