package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// Frames this gateway took for a client and never wrote. A push is answered
// 200 once its frame is queued, so the bridge takes it as delivered: when
// the connection then ends with frames still queued (its queue overflowed,
// a write failed or stalled, the client left, the instance stopped), the
// edge is the only one that knows. It dead-letters each such frame to
// WS_DLQ as the bridge dead-letters a push that failed: so what was taken
// and not written is on record, not lost without a trace.

// Why frames were dropped: the label of frames_dropped_total.
const (
	dropSlow  = "slow"  // the client did not read: its queue overflowed or a write stalled
	dropEnded = "ended" // the connection ended otherwise: the client left, a write failed, shutdown
)

// deadLetterGone is the dead letters' Ws-Reason, the bridge's for a
// connection that is gone.
const deadLetterGone = "gone"

// dropFrames records frames taken for connection id and never written:
// counted, logged, and, by an edge instance, dead-lettered (retried until
// NATS takes each). The emulator has no dead-letter stream of its own.
func (g *Gateway) dropFrames(id string, frames []outgoing, why, cause string) {
	if len(frames) == 0 {
		return
	}
	g.m.framesDropped.WithLabelValues(why).Add(float64(len(frames)))
	if g.edge == nil {
		g.log.Info("frames taken for a client dropped unwritten", "conn", id, "frames", len(frames), "cause", cause)
		return
	}
	g.log.Info("frames taken for a client dropped unwritten; dead-lettering them", "conn", id, "frames", len(frames), "cause", cause)
	for _, f := range frames {
		g.retries.add(&deadLetterJob{e: g.edge, id: id, f: f, cause: cause, n: g.dropped.Add(1)}, 0)
	}
}

// deadLetterJob publishes the dead letter of one frame.
type deadLetterJob struct {
	e     *edge
	id    string // the connection's
	f     outgoing
	cause string
	n     uint64 // tells apart the frames of pushes without a Ws-Seq
	// minimal: NATS refused the whole dead letter for good; the
	// metadata alone is tried.
	minimal bool
}

func (j *deadLetterJob) key() string {
	if j.f.seq.set {
		return "dlq " + strconv.FormatUint(j.f.seq.n, 10) + " " + j.id
	}
	return "dlq #" + strconv.FormatUint(j.n, 10) + " " + j.id
}

func (j *deadLetterJob) what() string { return retryDeadLetter }
func (j *deadLetterJob) size() int64  { return int64(len(j.f.data)) }

func (j *deadLetterJob) logAttrs() []any {
	attrs := []any{"conn", j.id, "bytes", len(j.f.data)}
	if j.f.seq.set {
		attrs = append(attrs, "seq", j.f.seq.n)
	}
	return attrs
}

func (j *deadLetterJob) run(ctx context.Context) error { return j.e.deadLetter(ctx, j) }

// deadLetter publishes j's frame to P.dlq.send.<token> in the shape of the
// bridge's dead letters: the original data (text, or binary as the bytes
// the push's base64 said), Ws-Data-Type, Ws-Error (the cause), Ws-Reason
// gone, Ws-Status 410 (what a push to the connection gets now),
// Ws-Attempts 1 (the push that reached this instance), Ws-Connection-Id,
// and, for a push that carried one, Ws-Seq and Nats-Msg-Id
// dlq-<seq>-<token>, the bridge's id for the same command and connection,
// so a retry, or the bridge dead-lettering the same command, stores one.
// The push body does not say the command's subject or kind: the kind is
// send, as a push to one connection is.
func (e *edge) deadLetter(ctx context.Context, j *deadLetterJob) error {
	token := subjects.Token(j.id)
	h := nats.Header{}
	cause := j.cause
	if len(cause) > 512 {
		cause = cause[:512]
	}
	h.Set(subjects.HeaderError, cause)
	h.Set(subjects.HeaderReason, deadLetterGone)
	h.Set(subjects.HeaderStatus, strconv.Itoa(http.StatusGone))
	h.Set(subjects.HeaderAttempts, "1")
	h.Set(subjects.HeaderConnID, j.id)
	dataType := subjects.DataText
	if j.f.typ == websocket.MessageBinary {
		dataType = subjects.DataBinary
	}
	h.Set(subjects.HeaderDataType, dataType)
	if j.f.seq.set {
		n := strconv.FormatUint(j.f.seq.n, 10)
		h.Set(subjects.HeaderSeq, n)
		h.Set(subjects.HeaderMsgID, "dlq-"+n+"-"+token)
	}
	m := &nats.Msg{Subject: e.names.DeadLetter(subjects.KindSend, token), Data: j.f.data, Header: h}
	if j.minimal {
		m.Data = nil
		h.Set(subjects.HeaderTruncated, strconv.Itoa(len(j.f.data)))
	}
	fitPayload(m, e.g.opts.NATS.MaxPayload())
	if _, err := e.js.PublishMsg(ctx, m); err != nil {
		err = fmt.Errorf("publish dead letter %s: %w", m.Subject, err)
		switch {
		case transientPublishErr(err):
			return err
		case !j.minimal:
			// As the bridge does: the metadata alone may be taken.
			j.minimal = true
			return err
		}
		return giveUp{err}
	}
	e.g.m.deadLetters.Inc()
	e.log.Debug("dead letter", "conn", j.id, "seq", h.Get(subjects.HeaderSeq), "bytes", len(j.f.data), "cause", cause)
	return nil
}

// fitPayload cuts m's data to fit the server's max_payload with its
// headers (a frame --max-message-size allows may not), saying so in
// Ws-Truncated with the original size, as the bridge does: a dead letter
// that does not fit would be refused forever.
func fitPayload(m *nats.Msg, maxPayload int64) {
	const slack = 512 // the header block's framing
	hdr := 0
	for k, vs := range m.Header {
		for _, v := range vs {
			hdr += len(k) + len(v) + 4
		}
	}
	if maxPayload <= 0 || int64(hdr+len(m.Data)+slack) <= maxPayload {
		return
	}
	m.Header.Set(subjects.HeaderTruncated, strconv.Itoa(len(m.Data)))
	room := max(maxPayload-int64(hdr+len(subjects.HeaderTruncated)+24+slack), 0)
	if int64(len(m.Data)) > room {
		m.Data = m.Data[:room]
	}
}

// transientPublishErr reports a publish error that NATS may not give
// again (no stream leader yet, a timeout, a reconnect), as the bridge
// classifies its dead letters' publishes; any other (a permission, a
// limit of the stream) it will.
func transientPublishErr(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream not ready, no quorum; 404: the stream is gone
		// (provisioned again).
		return apiErr.Code == 503 || apiErr.Code == 404 || apiErr.Code >= 500
	}
	return false
}
