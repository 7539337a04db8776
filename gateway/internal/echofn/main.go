// Command echofn is a tiny SCF Go function for the gateway emulator's tests:
// served by the real scf-go-lib runtime, it accepts every event and echoes
// what it saw, so a test can check the net/rpc invocation end to end.
//
// A registration event is accepted with the client's first subprotocol; a
// data event whose data is "fail" returns an error, to exercise the failed
// invocation path. With ECHOFN_PORT_TAKEN_ONCE naming a file that does not
// exist yet, it creates the file and finds its port taken.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strings"

	"github.com/tencentyun/scf-go-lib/cloudfunction"
	"github.com/tencentyun/scf-go-lib/functioncontext"
)

type webSocket struct {
	Action               string `json:"action"`
	SecConnectionID      string `json:"secConnectionID"`
	SecWebSocketProtocol string `json:"secWebSocketProtocol,omitempty"`
	DataType             string `json:"dataType,omitempty"`
	Data                 string `json:"data,omitempty"`
}

type reply struct {
	ErrNo        int             `json:"errNo"`
	ErrMsg       string          `json:"errMsg"`
	WebSocket    *webSocket      `json:"websocket,omitempty"`
	RequestID    string          `json:"requestId"`
	FunctionName string          `json:"functionName"`
	HasDeadline  bool            `json:"hasDeadline"`
	Event        json.RawMessage `json:"event"`
}

func handle(ctx context.Context, ev json.RawMessage) (json.RawMessage, error) {
	var in struct {
		WebSocket *webSocket `json:"websocket"`
	}
	_ = json.Unmarshal(ev, &in) // accept everything, even non-objects
	out := reply{ErrMsg: "ok", Event: ev}
	if fc, ok := functioncontext.FromContext(ctx); ok {
		out.RequestID, out.FunctionName = fc.RequestID, fc.FunctionName
	}
	_, out.HasDeadline = ctx.Deadline()
	if ws := in.WebSocket; ws != nil {
		if ws.Data == "fail" {
			return nil, errors.New("asked to fail")
		}
		if ws.Action == "connecting" {
			proto, _, _ := strings.Cut(ws.SecWebSocketProtocol, ",")
			out.WebSocket = &webSocket{Action: ws.Action, SecConnectionID: ws.SecConnectionID, SecWebSocketProtocol: proto}
		}
	}
	return json.Marshal(out)
}

func main() {
	if marker := os.Getenv("ECHOFN_PORT_TAKEN_ONCE"); marker != "" {
		// The first start finds its port taken, as when another socket
		// took it between the gateway choosing it and the function
		// binding it: the marker file says it happened.
		if f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
			_ = f.Close()
			if ln, err := net.Listen("tcp", ":"+os.Getenv("_LAMBDA_SERVER_PORT")); err == nil {
				defer ln.Close()
			}
		}
	}
	cloudfunction.Start(handle)
}
