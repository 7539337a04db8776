// Command noop is an SCF Go function that does nothing and answers
// {"errNo":0,"errMsg":"ok"}. BenchmarkTransferRPC serves it exactly like the
// transfer function to measure what the SCF net/rpc protocol alone costs.
package main

import (
	"context"
	"encoding/json"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
)

var ok = json.RawMessage(`{"errNo":0,"errMsg":"ok"}`)

func main() {
	scfrpc.Start(func(context.Context, json.RawMessage) (json.RawMessage, error) { return ok, nil })
}
