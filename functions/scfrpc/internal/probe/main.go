// Command probe is an SCF Go function for scfrpc's tests, served by
// scfrpc.Start: it answers with what it saw (the function context, the
// deadline, an environment variable the event names), fails when the event
// says "fail", panics when it says "panic" and returns nothing for "nil".
// Run without a handed listener it is served by scf-go-lib's runtime
// itself, so the tests compare both servers on the same handler.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"

	"github.com/tencentyun/scf-go-lib/functioncontext"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
)

type seen struct {
	Event         json.RawMessage `json:"event"`
	RequestID     string          `json:"requestId"`
	FunctionName  string          `json:"functionName"`
	Namespace     string          `json:"namespace"`
	Version       string          `json:"version"`
	TimeLimitInMs int32           `json:"timeLimitInMs"`
	HasDeadline   bool            `json:"hasDeadline"`
	ClientContext any             `json:"clientContext"`
	Env           string          `json:"env"`
	HandedFD      string          `json:"handedFD"`
}

func handle(ctx context.Context, ev json.RawMessage) (json.RawMessage, error) {
	var in struct {
		Do  string `json:"do"`
		Env string `json:"env"`
	}
	_ = json.Unmarshal(ev, &in) // any JSON is an event
	switch in.Do {
	case "fail":
		return nil, errors.New("asked to fail")
	case "panic":
		panic("asked to panic")
	case "nil":
		return nil, nil
	}
	out := seen{Event: ev, HandedFD: os.Getenv(scfrpc.EnvListenerFD)}
	if fc, ok := functioncontext.FromContext(ctx); ok {
		out.RequestID, out.FunctionName, out.Namespace = fc.RequestID, fc.FunctionName, fc.Namespace
		out.Version, out.TimeLimitInMs, out.ClientContext = fc.FunctionVersion, fc.TimeLimitInMs, fc.ClientContext
	}
	_, out.HasDeadline = ctx.Deadline()
	if in.Env != "" {
		out.Env = os.Getenv(in.Env)
	}
	return json.Marshal(out)
}

func main() {
	scfrpc.Start(handle)
}
