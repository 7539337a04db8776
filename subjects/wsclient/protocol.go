package wsclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// The session protocol's wire format (gateway/README.md, "The wire protocol
// (version 1)").
const (
	prefixData    = 'd'
	prefixControl = 'c'

	// statusReset is the close code that follows a reset control message.
	statusReset websocket.StatusCode = 4001

	// reasonOff is the reset reason of a gateway with sessions turned off.
	reasonOff = "off"
	// reasonClosed: the session was closed while the client was away.
	reasonClosed = "closed"
	// reasonNotResumed is the Reset reason when a gateway answers a resume
	// with a new session instead of a reset: the effect is the same.
	reasonNotResumed = "not resumed"
)

// control is any control message from the gateway; t says which fields
// mean something.
type control struct {
	T       string  `json:"t"`
	Key     string  `json:"key"`     // welcome
	ID      string  `json:"id"`      // welcome
	Token   string  `json:"token"`   // welcome
	Resumed bool    `json:"resumed"` // welcome
	In      uint64  `json:"in"`      // welcome, ack
	Window  float64 `json:"window"`  // welcome, seconds
	Reason  string  `json:"reason"`  // reset
}

// parseControl reads the body of a 'c' message.
func parseControl(b []byte) (control, error) {
	var m control
	if err := json.Unmarshal(b, &m); err != nil {
		return control{}, fmt.Errorf("%w: control message %.64q: %v", ErrProtocol, b, err)
	}
	if m.T == "" {
		return control{}, fmt.Errorf("%w: control message %.64q has no \"t\"", ErrProtocol, b)
	}
	return m, nil
}

// parseWelcome reads the first message of a session socket: a welcome, or a
// reset when the resume is refused.
func parseWelcome(b []byte) (control, error) {
	if len(b) == 0 || b[0] != prefixControl {
		return control{}, fmt.Errorf("%w: the first message is not a welcome (%.32q): does the gateway support resumable sessions?", ErrProtocol, b)
	}
	m, err := parseControl(b[1:])
	if err != nil {
		return control{}, err
	}
	switch m.T {
	case "welcome":
		if m.Key == "" {
			return control{}, fmt.Errorf("%w: welcome without a key", ErrProtocol)
		}
		return m, nil
	case "reset":
		return control{}, &resetError{reason: m.Reason}
	}
	return control{}, fmt.Errorf("%w: the first message is %q, not a welcome", ErrProtocol, m.T)
}

// ackFrame is the client's acknowledgement of the first n data messages.
func ackFrame(n uint64) []byte {
	b := make([]byte, 0, 40)
	b = append(b, `c{"t":"ack","received":`...)
	b = strconv.AppendUint(b, n, 10)
	return append(b, '}')
}

// sessionURL is base with the session's query parameters: resume=1 for a
// new session, resume=<key>&received=<n> to resume. The rest of base's
// query is kept as it was written (only resume and received are replaced),
// since an application may sign or otherwise depend on its exact form.
func sessionURL(base *url.URL, fresh bool, key string, received uint64) string {
	u := *base
	var parts []string
	for p := range strings.SplitSeq(base.RawQuery, "&") {
		if p == "" {
			continue
		}
		k, _, _ := strings.Cut(p, "=")
		if k, err := url.QueryUnescape(k); err == nil && (k == "resume" || k == "received") {
			continue
		}
		parts = append(parts, p)
	}
	if fresh {
		parts = append(parts, "resume=1")
	} else {
		parts = append(parts, "resume="+url.QueryEscape(key), "received="+strconv.FormatUint(received, 10))
	}
	u.RawQuery = strings.Join(parts, "&")
	u.ForceQuery = false
	return u.String()
}

// redact is a URL fit for errors and logs: its query may carry credentials.
func redact(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	return r.String()
}

// backoff is the delay before reconnect attempt n (from 0): drawn uniformly
// from [0, min(hi, lo·2ⁿ)] ("full jitter"), so that the clients of an
// instance that went away do not all come back in the same instant.
// rnd(m) returns a number in [0, m).
func backoff(n int, lo, hi time.Duration, rnd func(int64) int64) time.Duration {
	ceil := hi
	if n < 62 && lo <= hi>>n {
		ceil = min(hi, lo<<n)
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rnd(int64(ceil) + 1))
}

// ending says what a socket's end means for the session.
type ending int

const (
	endResume ending = iota + 1 // a drop: reconnect and resume
	endReset                    // refused: start a new session
	endOver                     // the session is over for good
	endClosed                   // Close was called
)

// verdict is how a socket ended.
type verdict struct {
	end    ending
	code   websocket.StatusCode // the close's, if any
	reason string               // the close's or the reset's
	err    error
}

// classify maps how a socket's read ended to what happens next. A socket
// that ends without a close frame, or with 1001 (an instance shutting down)
// or 1006, is suspended by the gateway: resume it. So are 1012, 1013 and
// 1014, which say "come back" (RFC 6455's registry): the gateway closes
// with 1013 a resume it could not decide because the instance holding the
// session did not answer. 4001 follows a reset. Any other close is the
// gateway ending the session (a close push from the backend, a policy
// close), and in plain mode every end is final.
func classify(err error, plain bool) verdict {
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		if plain {
			return verdict{end: endOver, code: websocket.StatusAbnormalClosure, err: err}
		}
		return verdict{end: endResume, err: err}
	}
	v := verdict{code: ce.Code, reason: ce.Reason, err: err}
	switch {
	case plain:
		v.end = endOver
	case ce.Code == websocket.StatusGoingAway || ce.Code == websocket.StatusAbnormalClosure,
		ce.Code == websocket.StatusServiceRestart || ce.Code == websocket.StatusTryAgainLater,
		ce.Code == websocket.StatusBadGateway:
		v.end = endResume
	case ce.Code == statusReset:
		v.end = endReset
	default:
		v.end = endOver
	}
	return v
}
