package wsclient

import (
	"errors"
	"fmt"
	"net/http"
)

// ErrClosed is what Read returns once the client is over and its buffered
// messages are read, and what Send returns once it is over: matched with
// errors.Is. When the gateway ended the session the error wraps its close
// too (websocket.CloseStatus reads the code).
var ErrClosed = errors.New("wsclient: closed")

// ErrSessionsOff: the gateway refused a new session because it runs with
// sessions turned off (--resume-window 0). Dial with Options.NoResume.
var ErrSessionsOff = errors.New("wsclient: the gateway has resumable sessions turned off")

// ErrProtocol: the gateway broke the session protocol (no welcome first, an
// unknown prefix, a control message that is not JSON…). A client and a
// gateway that disagree on the protocol will not agree on a retry either,
// so it ends the client.
var ErrProtocol = errors.New("wsclient: session protocol error")

// ResetError is the Err of a Reset event: the gateway could not resume the
// session and the client started a new one.
type ResetError struct {
	// Reason is the gateway's: expired, unknown, slow, lost, off; or
	// "not resumed" when a gateway answered a resume with a new session.
	Reason string
	// Lost counts the messages Send had taken that the old session had not
	// acknowledged. They are not sent to the new session: they were
	// addressed to a connection the backend has seen end. Some of them may
	// have been passed on before the session ended.
	Lost int
	// Unsent are those messages, in order, for an application that knows
	// they still mean something to a new connection and sends them again.
	Unsent []Message
}

func (e *ResetError) Error() string {
	return fmt.Sprintf("wsclient: session reset (%s): %d sent messages not acknowledged by the old session were dropped", e.Reason, e.Lost)
}

// UpgradeError is an upgrade the gateway answered with an HTTP status
// instead of a WebSocket (403: Origin not allowed or the register function
// said no; 429 and 503: a limit). A 4xx other than 408 and 429 ends a client
// that was reconnecting: trying again would get the same answer.
type UpgradeError struct {
	StatusCode int
	Err        error
}

func (e *UpgradeError) Error() string {
	return fmt.Sprintf("upgrade refused: %d %s: %v", e.StatusCode, http.StatusText(e.StatusCode), e.Err)
}

func (e *UpgradeError) Unwrap() error { return e.Err }

// final reports whether an upgrade refused with this status should not be
// tried again.
func (e *UpgradeError) final() bool {
	return e.StatusCode >= 400 && e.StatusCode < 500 &&
		e.StatusCode != http.StatusRequestTimeout && e.StatusCode != http.StatusTooManyRequests
}

// resetError is a resume refused during the handshake: a reset control
// message, or a close with 4001, instead of the welcome.
type resetError struct{ reason string }

func (e *resetError) Error() string { return "session reset by the gateway: " + e.reason }
