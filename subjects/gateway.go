package subjects

import "encoding/json"

// Gateway actions of the websocket.action field (SPEC §1).
const (
	ActionConnecting = "connecting"
	ActionDataSend   = "data send"
	ActionDataRecv   = "data recv"
	ActionClosing    = "closing"
)

// GatewayEvent is what Tencent API Gateway sends to a WebSocket function, for
// every role. Unknown fields are tolerated; RequestContext is kept raw so the
// connect event can carry it unchanged.
type GatewayEvent struct {
	RequestContext json.RawMessage   `json:"requestContext,omitempty"`
	WebSocket      *GatewayWebSocket `json:"websocket,omitempty"`
}

// GatewayWebSocket is the websocket object of gateway events, replies and
// reverse-push bodies.
type GatewayWebSocket struct {
	Action                 string `json:"action"`
	SecConnectionID        string `json:"secConnectionID"`
	SecWebSocketProtocol   string `json:"secWebSocketProtocol,omitempty"`
	SecWebSocketExtensions string `json:"secWebSocketExtensions,omitempty"`
	DataType               string `json:"dataType,omitempty"`
	Data                   string `json:"data,omitempty"`
}

// RequestContext is the part of the gateway's requestContext wsbridge reads.
// The gateway sends serviceId; some documents show serviceName.
type RequestContext struct {
	ServiceID   string `json:"serviceId"`
	ServiceName string `json:"serviceName"`
	Path        string `json:"path"`
	HTTPMethod  string `json:"httpMethod"`
	RequestID   string `json:"requestId"`
	SourceIP    string `json:"sourceIp"`
	Stage       string `json:"stage"`
}

// Service returns serviceId, or serviceName when serviceId is absent.
func (rc RequestContext) Service() string {
	if rc.ServiceID != "" {
		return rc.ServiceID
	}
	return rc.ServiceName
}

// GatewayReply is a function's answer to the gateway (errNo 0 accepts a
// connection), and also the reverse-push address's answer.
type GatewayReply struct {
	ErrNo     int               `json:"errNo"`
	ErrMsg    string            `json:"errMsg"`
	WebSocket *GatewayWebSocket `json:"websocket,omitempty"`
}

// PushBody is the body POSTed to the gateway's reverse-push address.
type PushBody struct {
	WebSocket GatewayWebSocket `json:"websocket"`
}
