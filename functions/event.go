package functions

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wsbridge/wsbridge/subjects"
)

// The seed's answers to malformed registration events, kept verbatim.
var (
	errNoRequestContext = &rejectError{code: CodeNoRequestContext, msg: "not found request context"}
	errNoWebSocket      = &rejectError{code: CodeNoWebSocket, msg: "not found websocket"}
)

// rejectError is a registration refusal whose errNo and errMsg go to the
// gateway as they are.
type rejectError struct {
	code int
	msg  string
}

func (e *rejectError) Error() string { return fmt.Sprintf("errNo %d: %s", e.code, e.msg) }

// DecodeEvent decodes a gateway event of any role. Unknown fields are
// ignored and a JSON null requestContext counts as absent; only input that
// is not a JSON object of the expected shape fails, with ErrBadEvent.
func DecodeEvent(payload []byte) (subjects.GatewayEvent, error) {
	var ev subjects.GatewayEvent
	if err := json.Unmarshal(payload, &ev); err != nil {
		return subjects.GatewayEvent{}, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	if bytes.Equal(bytes.TrimSpace(ev.RequestContext), []byte("null")) {
		ev.RequestContext = nil
	}
	return ev, nil
}

// SplitProtocols splits the gateway's secWebSocketProtocol (the client's
// Sec-WebSocket-Protocol header) into trimmed, non-empty protocol names in
// the client's order of preference.
func SplitProtocols(s string) []string { return splitList(s, ",") }

// SplitExtensions splits secWebSocketExtensions into trimmed, non-empty
// parts. Extension parameters follow ';' and extensions ','; both separate
// here because wsbridge only records what the client offered.
func SplitExtensions(s string) []string { return splitList(s, ",;") }

func splitList(s, seps string) []string {
	out := []string{} // [] rather than null in the connect event's JSON
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return strings.ContainsRune(seps, r) }) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// checkConnID validates secConnectionID for use as a header value and token
// (the contract's limits, subjects.CheckConnID).
func checkConnID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: missing websocket.secConnectionID", ErrBadEvent)
	}
	if err := subjects.CheckConnID(id); err != nil {
		return fmt.Errorf("%w: websocket.secConnectionID: %v", ErrBadEvent, err)
	}
	return nil
}

// checkAction accepts an event's action when it is one of want, or absent:
// the single-role binaries are routed by the gateway, so a missing action is
// tolerated, while a different one means the function is wired to the wrong
// event and must say so.
func checkAction(ws *subjects.GatewayWebSocket, role string, want ...string) error {
	if ws.Action == "" {
		return nil
	}
	for _, w := range want {
		if ws.Action == w {
			return nil
		}
	}
	return fmt.Errorf("%w: %s got action %q, want %q", ErrBadEvent, role, clip(ws.Action), strings.Join(want, `" or "`))
}

// parseConnect checks a connecting event and builds its connect event
// (without userId, groups and state, which authorization may add).
// Malformed events fail with the seed's rejections or ErrBadEvent.
func parseConnect(ev subjects.GatewayEvent, now time.Time) (subjects.ConnectEvent, error) {
	if len(ev.RequestContext) == 0 {
		return subjects.ConnectEvent{}, errNoRequestContext
	}
	if ev.WebSocket == nil {
		return subjects.ConnectEvent{}, errNoWebSocket
	}
	var rc subjects.RequestContext
	if err := json.Unmarshal(ev.RequestContext, &rc); err != nil {
		return subjects.ConnectEvent{}, &rejectError{code: CodeNoRequestContext, msg: "invalid request context: " + err.Error()}
	}
	ws := ev.WebSocket
	if err := checkAction(ws, RoleRegister, subjects.ActionConnecting); err != nil {
		return subjects.ConnectEvent{}, err
	}
	if err := checkConnID(ws.SecConnectionID); err != nil {
		return subjects.ConnectEvent{}, err
	}
	return subjects.ConnectEvent{
		ConnectionID:   ws.SecConnectionID,
		Token:          subjects.Token(ws.SecConnectionID),
		ConnectedAt:    now.UTC(),
		SourceIP:       rc.SourceIP,
		ServiceID:      rc.Service(),
		Stage:          rc.Stage,
		Protocols:      SplitProtocols(ws.SecWebSocketProtocol),
		Extensions:     SplitExtensions(ws.SecWebSocketExtensions),
		Groups:         []string{},
		RequestContext: ev.RequestContext,
	}, nil
}

// dataMessage is a validated data event.
type dataMessage struct {
	connID   string
	token    string
	dataType string // subjects.DataText or subjects.DataBinary
	data     []byte // raw bytes, base64 decoded for binary
}

// parseData checks a data event and decodes its payload, refusing more than
// max decoded bytes.
func parseData(ev subjects.GatewayEvent, max int) (dataMessage, error) {
	ws := ev.WebSocket
	if ws == nil {
		return dataMessage{}, fmt.Errorf("%w: not found websocket", ErrBadEvent)
	}
	if err := checkAction(ws, RoleTransfer, subjects.ActionDataSend, subjects.ActionDataRecv); err != nil {
		return dataMessage{}, err
	}
	if err := checkConnID(ws.SecConnectionID); err != nil {
		return dataMessage{}, err
	}
	m := dataMessage{connID: ws.SecConnectionID, token: subjects.Token(ws.SecConnectionID)}
	switch ws.DataType {
	case subjects.DataText, "":
		// Text is the gateway's default; an absent dataType is read as text
		// rather than dropping the message.
		if len(ws.Data) > max {
			return dataMessage{}, fmt.Errorf("%w: text message of %d bytes, limit %d (%s%s)", ErrTooLarge, len(ws.Data), max, subjects.EnvPrefix, EnvMaxMessageSize)
		}
		m.dataType, m.data = subjects.DataText, []byte(ws.Data)
	case subjects.DataBinary:
		b, err := base64.StdEncoding.DecodeString(ws.Data)
		if err != nil {
			return dataMessage{}, fmt.Errorf("%w: binary data is not standard base64: %v", ErrBadEvent, err)
		}
		if len(b) > max {
			return dataMessage{}, fmt.Errorf("%w: binary message of %d bytes, limit %d (%s%s)", ErrTooLarge, len(b), max, subjects.EnvPrefix, EnvMaxMessageSize)
		}
		m.dataType, m.data = subjects.DataBinary, b
	default:
		return dataMessage{}, fmt.Errorf("%w: dataType %q, want text or binary", ErrBadEvent, clip(ws.DataType))
	}
	return m, nil
}

// parseClosing checks a closing event and returns its connection id.
func parseClosing(ev subjects.GatewayEvent) (string, error) {
	ws := ev.WebSocket
	if ws == nil {
		return "", fmt.Errorf("%w: not found websocket", ErrBadEvent)
	}
	if err := checkAction(ws, RoleCleanup, subjects.ActionClosing); err != nil {
		return "", err
	}
	if err := checkConnID(ws.SecConnectionID); err != nil {
		return "", err
	}
	return ws.SecConnectionID, nil
}

// clip shortens untrusted input before it is quoted in an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut-- // do not split a UTF-8 sequence
	}
	return s[:cut] + "…"
}
