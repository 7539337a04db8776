package gateway

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/http"
	"strings"

	"github.com/wsbridge/wsbridge/subjects"
)

// The events below are the gateway's own wire format, written here rather
// than with subjects.GatewayEvent so the emulator controls every byte: data
// events always carry "data" (an empty frame is "data":"", not a missing
// field), and the connecting event has the identity and websocketEnable
// fields the real gateway sends.

type requestContext struct {
	ServiceID       string   `json:"serviceId"`
	Path            string   `json:"path"`
	HTTPMethod      string   `json:"httpMethod"`
	RequestID       string   `json:"requestId"`
	Identity        struct{} `json:"identity"`
	SourceIP        string   `json:"sourceIp"`
	Stage           string   `json:"stage"`
	WebsocketEnable bool     `json:"websocketEnable"`
}

type connectingWebSocket struct {
	Action                 string `json:"action"`
	SecConnectionID        string `json:"secConnectionID"`
	SecWebSocketProtocol   string `json:"secWebSocketProtocol,omitempty"`
	SecWebSocketExtensions string `json:"secWebSocketExtensions,omitempty"`
}

type connectingEvent struct {
	RequestContext requestContext      `json:"requestContext"`
	WebSocket      connectingWebSocket `json:"websocket"`
}

type dataWebSocket struct {
	Action          string `json:"action"`
	SecConnectionID string `json:"secConnectionID"`
	DataType        string `json:"dataType"`
	Data            string `json:"data"`
}

type dataEvent struct {
	WebSocket dataWebSocket `json:"websocket"`
}

type closingWebSocket struct {
	Action          string `json:"action"`
	SecConnectionID string `json:"secConnectionID"`
}

type closingEvent struct {
	WebSocket closingWebSocket `json:"websocket"`
}

func newDataEvent(connID, dataType, data string) dataEvent {
	return dataEvent{WebSocket: dataWebSocket{
		Action:          subjects.ActionDataRecv,
		SecConnectionID: connID,
		DataType:        dataType,
		Data:            data,
	}}
}

func newClosingEvent(connID string) closingEvent {
	return closingEvent{WebSocket: closingWebSocket{Action: subjects.ActionClosing, SecConnectionID: connID}}
}

// newConnID returns an id shaped like Tencent's secConnectionID: standard
// base64 of 16 random bytes, so '+', '/' and '=' occur and every consumer
// is forced through the token codec.
func newConnID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return base64.StdEncoding.EncodeToString(b[:])
}

// newRequestID returns a random UUID-shaped id, like SCF request ids.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// headerList joins every value of a comma-separated header as the gateway
// forwards it: "a, b" and two header lines "a" and "b" both become "a,b".
// It returns "" when the client did not send the header.
func headerList(h http.Header, key string) string {
	var out []string
	for _, v := range h.Values(key) {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return strings.Join(out, ",")
}

// headerHasToken reports whether a comma-separated header holds token,
// ignoring case, as the WebSocket handshake's Connection and Upgrade need.
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), token) {
				return true
			}
		}
	}
	return false
}

// sourceIP is the client address without the port.
func sourceIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
