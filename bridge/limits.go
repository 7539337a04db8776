package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// Bounds on what one message or one request can make the bridge hold or do.
// The contract's limits on tokens and names are in subjects (limits.go).

// heldSize is what a held message counts against Options.MaxHeldBytes: its
// body and headers, and the push body built from it (about the body again;
// a fan-out shares one tail, but each of its items adds a small head).
func heldSize(m jetstream.Msg) int64 {
	n := int64(2*len(m.Data())) + 256
	for k, vs := range m.Headers() {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// share is each owned partition's part of MaxHeldBytes.
func (b *Bridge) share() int64 {
	return b.opts.MaxHeldBytes / int64(max(1, b.ownedCount()))
}

// hold counts n bytes taken in the held-bytes gauge.
func (b *Bridge) hold(n int64) {
	b.hmu.Lock()
	b.heldBytes += n
	b.m.HeldBytes.Set(float64(b.heldBytes))
	b.hmu.Unlock()
}

// held is the bytes this bridge holds.
func (b *Bridge) held() int64 {
	b.hmu.Lock()
	defer b.hmu.Unlock()
	return b.heldBytes
}

// release returns a resolved command's bytes, and resumes the partitions
// paused for want of room that now have it.
func (b *Bridge) release(n int64) {
	if n == 0 {
		return
	}
	b.hmu.Lock()
	b.heldBytes -= n
	b.m.HeldBytes.Set(float64(b.heldBytes))
	b.hmu.Unlock()
	if b.pausedParts.Load() > 0 {
		for _, p := range b.ownedParts() {
			p.resume()
		}
	}
}

// pullBytes bounds the bytes the log reader may buffer in the client ahead
// of its partitions: a quarter of the held budget, but at least two of the
// largest messages the server accepts (a pull whose byte limit is below a
// message's size never gets it).
func pullBytes(maxHeld, maxPayload int64) int {
	n := max(maxHeld/4, 2*maxPayload+64<<10)
	return int(min(n, 1<<30))
}

// noRedirects makes the push client return a 3xx as the answer: following
// one would turn the POST into a GET (a 302 the client then reports as
// success, the message lost) or re-post connection ids and data to another
// host (307).
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// withoutRedirects returns hc, or a copy of it, that does not follow
// redirects.
func withoutRedirects(hc *http.Client) *http.Client {
	c := *hc
	c.CheckRedirect = noRedirects
	return &c
}

// Healthy reports whether the process can still work at all: nil unless its
// NATS connection is closed for good (a disconnected connection reconnects
// and only makes it not ready).
func (b *Bridge) Healthy() error {
	if b.nc.IsClosed() {
		err := ErrNATSClosed
		if last := b.nc.LastError(); last != nil {
			return fmt.Errorf("%w: %v", err, last)
		}
		return err
	}
	return nil
}

// deadLetterMsg builds a dead letter that fits in maxPayload: the original
// body and headers plus meta (the Ws-* headers that say why). When it would
// not fit, the body is cut (Ws-Truncated gives the original size) and, if
// the headers alone are too large, only meta and the connection id are
// kept (Ws-Truncated then says "headers").
func deadLetterMsg(subject string, body []byte, orig nats.Header, meta nats.Header, maxPayload int64) *nats.Msg {
	h := nats.Header{}
	for k, v := range orig {
		h[k] = append([]string(nil), v...)
	}
	for k, v := range meta {
		h[k] = v
	}
	m := &nats.Msg{Subject: subject, Data: body, Header: h}
	// Room for the header block's framing (NATS/1.0 line, CRLFs).
	const slack = 512
	hdr := headerSize(h)
	if int64(hdr+len(body)+slack) <= maxPayload {
		return m
	}
	if int64(hdr+slack+64) > maxPayload {
		// The original headers alone are too large: keep the metadata.
		h = nats.Header{}
		for k, v := range meta {
			h[k] = v
		}
		if id := orig.Get(subjects.HeaderConnID); id != "" && len(id) <= subjects.MaxConnIDLen {
			h.Set(subjects.HeaderConnID, id)
		}
		h.Set(subjects.HeaderTruncated, "headers")
		m.Header = h
		hdr = headerSize(h)
	} else {
		h.Set(subjects.HeaderTruncated, strconv.Itoa(len(body)))
		hdr = headerSize(h)
	}
	room := max(maxPayload-int64(hdr+slack), 0)
	if int64(len(body)) > room {
		m.Data = body[:room]
		if m.Header.Get(subjects.HeaderTruncated) == "headers" {
			m.Header.Set(subjects.HeaderTruncated, "headers,"+strconv.Itoa(len(body)))
		}
	}
	return m
}

func headerSize(h nats.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4 // "k: v\r\n"
		}
	}
	return n
}

// transientPublishErr reports whether a failed dead-letter publish may
// succeed later: no answer (timeout, no responders while WS_DLQ is being
// created or its leader elected, connection down), or a JetStream error
// about the stream's availability. Anything else (a refused size, a full
// stream) gives the same answer again.
func transientPublishErr(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream not ready / no quorum; 404: the stream is gone
		// (it is re-created at the next start).
		return apiErr.Code == 503 || apiErr.Code == 404 || apiErr.Code >= 500
	}
	return false
}
