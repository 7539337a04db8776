package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
)

// servePush is the reverse-push address. It accepts exactly the two bodies
// of SPEC §1 and answers every request with {"errNo":…,"errMsg":…}; being
// strict here is what lets the emulator catch a bridge that sends anything
// the real gateway might not take.
func (g *Gateway) servePush(w http.ResponseWriter, r *http.Request) {
	var status, errNo int
	var msg string
	if g.edge != nil {
		// Whoever asks whether this instance is alive learns who answers.
		w.Header().Set(HeaderInstance, g.opts.InstanceID)
	}
	if g.opts.PushToken != "" && !bearerOK(r.Header.Get("Authorization"), g.opts.PushToken) {
		status, errNo, msg = http.StatusUnauthorized, http.StatusUnauthorized, "push needs Authorization: Bearer <push token>"
		w.Header().Set("WWW-Authenticate", `Bearer realm="wsbridge-push"`)
	} else if r.Header.Get(headerTake) != "" {
		// Another instance takes a session its client resumed there.
		g.serveTake(w, r)
		return
	} else {
		status, errNo, msg = g.push(w, r)
	}
	result := pushInvalid
	switch {
	case status == http.StatusOK:
		g.stats.pushOK.Add(1)
		result = pushOK
	case status == http.StatusNotFound:
		g.stats.pushNotFound.Add(1)
		result = pushGone
	case status == http.StatusGone:
		g.stats.pushFailed.Add(1)
		result = pushGone
	case status >= 500:
		g.stats.pushFailed.Add(1)
		result = pushError
	case status == http.StatusUnauthorized:
		g.stats.pushInvalid.Add(1)
		result = pushUnauthorized
	default:
		g.stats.pushInvalid.Add(1)
	}
	g.m.pushes.WithLabelValues(result).Inc()
	if status != http.StatusOK {
		g.log.Debug("push refused", "status", status, "errMsg", msg)
	}
	writeReply(w, status, errNo, msg)
}

func (g *Gateway) push(w http.ResponseWriter, r *http.Request) (status, errNo int, msg string) {
	bad := func(format string, a ...any) (int, int, string) {
		return http.StatusBadRequest, http.StatusBadRequest, fmt.Sprintf(format, a...)
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return http.StatusMethodNotAllowed, http.StatusMethodNotAllowed, "method " + r.Method + " not allowed: push with POST"
	}
	sq, err := parseSeq(r.Header)
	if err != nil {
		return bad("%v", err)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, g.maxPushBody()))
	dec.DisallowUnknownFields()
	var body subjects.PushBody
	if err := dec.Decode(&body); err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return http.StatusRequestEntityTooLarge, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("push body larger than %d bytes", mbe.Limit)
		}
		return bad("malformed push body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return bad("malformed push body: data after the JSON object")
	}
	ws := body.WebSocket
	if ws.SecConnectionID == "" {
		return bad("websocket.secConnectionID is required")
	}

	switch ws.Action {
	case subjects.ActionDataSend:
		// One spare byte in front: a session's frames start with their
		// prefix (session.go).
		var typ websocket.MessageType
		var frame []byte
		switch ws.DataType {
		case subjects.DataText:
			typ = websocket.MessageText
			frame = make([]byte, 1+len(ws.Data))
			copy(frame[1:], ws.Data)
		case subjects.DataBinary:
			typ = websocket.MessageBinary
			frame = make([]byte, 1+base64.StdEncoding.DecodedLen(len(ws.Data)))
			n, err := base64.StdEncoding.Decode(frame[1:], []byte(ws.Data))
			if err != nil {
				return bad("websocket.data is not valid base64 for dataType binary: %v", err)
			}
			frame = frame[:1+n]
		default:
			return bad("websocket.dataType %q: want %q or %q", ws.DataType, subjects.DataText, subjects.DataBinary)
		}
		if n := int64(len(frame) - 1); n > g.opts.MaxMessageSize {
			return http.StatusRequestEntityTooLarge, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("message of %d bytes exceeds the %d byte limit", n, g.opts.MaxMessageSize)
		}
		return g.deliver(ws.SecConnectionID, sq, typ, frame, false)

	case subjects.ActionClosing:
		return g.deliver(ws.SecConnectionID, sq, 0, nil, true)

	default:
		return bad("websocket.action %q: want %q or %q", ws.Action, subjects.ActionDataSend, subjects.ActionClosing)
	}
}

// seq is a push's Ws-Seq (subjects.HeaderSeq); set is false on a push
// without one, which is written as it comes.
type seq struct {
	n   uint64
	set bool
}

// parseSeq reads a push's Ws-Seq: absent, or one decimal uint64.
func parseSeq(h http.Header) (seq, error) {
	vs := h.Values(subjects.HeaderSeq)
	switch len(vs) {
	case 0:
		return seq{}, nil
	case 1:
	default:
		return seq{}, fmt.Errorf("%s given %d times: want one", subjects.HeaderSeq, len(vs))
	}
	n, err := strconv.ParseUint(vs[0], 10, 64)
	if err != nil {
		return seq{}, fmt.Errorf("%s %q: want the stream sequence of the command, a decimal number from 0 to %d",
			subjects.HeaderSeq, clipHeader(vs[0]), uint64(math.MaxUint64))
	}
	return seq{n: n, set: true}, nil
}

// repeated counts a push answered as delivered without being written: its
// Ws-Seq is at or below the last one written to the connection.
func (g *Gateway) repeated() {
	g.stats.pushRepeated.Add(1)
	g.m.pushesRepeated.Inc()
}

// bearerOK compares "Bearer <token>" in constant time.
func bearerOK(header, token string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// awaitConn is find bounded by WriteTimeout. Not the request's context:
// the frame a push queues must not depend on whether its caller waited.
func (g *Gateway) awaitConn(id string) (_ *conn, status, errNo int, msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), g.opts.WriteTimeout)
	defer cancel()
	return g.find(ctx, id)
}

// find returns the accepted connection id, waiting while it is still being
// upgraded; otherwise the answer to give.
func (g *Gateway) find(ctx context.Context, id string) (_ *conn, status, errNo int, msg string) {
	c := g.lookup(id)
	if c == nil {
		if inst, ok := subjects.EdgeInstance(id); ok && g.edge != nil && inst != g.opts.InstanceID {
			// Misrouted (a bridge's route older than an address that
			// moved to this instance): not gone, so the bridge tries again
			// and looks the instance up afresh.
			return nil, http.StatusServiceUnavailable, http.StatusServiceUnavailable, "connection of gateway instance " + inst + ", not this one"
		}
		return nil, http.StatusNotFound, http.StatusNotFound, "connection not found"
	}
	ws, err := c.accepted(ctx)
	if err != nil {
		// Transient: the register function is still deciding.
		return nil, http.StatusServiceUnavailable, http.StatusServiceUnavailable, "connection is still being registered"
	}
	if ws == nil {
		return nil, http.StatusNotFound, http.StatusNotFound, "connection not found"
	}
	return c, 0, 0, ""
}

// maxPushBody allows the largest message in its worst JSON encoding (every
// byte escaped as \u00XX) plus the envelope.
func (g *Gateway) maxPushBody() int64 {
	return g.opts.MaxMessageSize*6 + 64<<10
}
