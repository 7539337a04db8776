package gateway

import (
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// resume serves an upgrade with ?resume=<key>&received=<N>: no register
// invocation (the connection exists); the socket is accepted, the session
// attached to it (from this instance, or taken from the one holding it),
// and served. It reports whether the socket was handed off (its slot and
// IP count are then released when it ends).
func (g *Gateway) resume(w http.ResponseWriter, r *http.Request, ip, key string) bool {
	holder, id, secret, kerr := parseKey(key)
	received, rerr := parseReceived(r.URL.Query().Get("received"))
	if kerr != nil || rerr != nil {
		g.log.Info("resume refused: malformed request", "key_err", kerr, "received_err", rerr)
		g.refuseSession(w, r, resetUnknown)
		return false
	}
	c := &conn{g: g, id: id, ip: ip, ready: make(chan struct{})}
	opts := c.acceptOptions()
	if p := firstProtocol(headerList(r.Header, "Sec-WebSocket-Protocol")); p != "" {
		// The protocol the register function chose when the session
		// started is the client's to offer again.
		opts.Subprotocols = []string{p}
	}
	ws, err := websocket.Accept(smallBuffers{w, c}, r, opts)
	if err != nil {
		g.log.Info("resume: upgrade failed", "conn", id, "err", err)
		return false
	}
	var reason string
	switch {
	case holder == g.holderName():
		reason = g.resumeLocal(c, secret, received)
	case g.edge != nil:
		reason = g.edge.resumeRemote(r.Context(), c, holder, key, received)
	default:
		reason = resetUnknown
	}
	switch reason {
	case "":
		c.open(ws)
		return true
	case takeLater:
		g.m.sessionRefusals.WithLabelValues(takeLater).Inc()
		_ = ws.Close(closeTryAgain, "the instance holding the session did not answer; resume again")
	default:
		g.m.sessionRefusals.WithLabelValues(reason).Inc()
		g.log.Debug("resume refused", "conn", id, "reason", reason)
		refuseResume(ws, reason)
	}
	return false
}

// refuseSession accepts an upgrade in session mode only to say why the
// session cannot be (a reset), without invoking any function.
func (g *Gateway) refuseSession(w http.ResponseWriter, r *http.Request, reason string) {
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	g.m.sessionRefusals.WithLabelValues(reason).Inc()
	refuseResume(ws, reason)
}

// deliver hands a push (a frame, or a close when closing) to connection
// id: to the socket serving it, or to its suspended session. A session's
// frames carry the data prefix: frame is the payload with one spare byte
// in front.
func (g *Gateway) deliver(id string, sq seq, typ websocket.MessageType, frame []byte, closing bool) (status, errNo int, msg string) {
	for try := 0; ; try++ {
		c, status, errNo, msg := g.awaitConn(id)
		if c == nil {
			if s := g.session(id); s != nil {
				f := outgoing{typ: typ, data: frame, seq: sq}
				if len(f.data) > 0 {
					f.data[0] = prefixData
				}
				handled, res := g.offer(s, sq, f, closing)
				if !handled && try < deliverTries {
					continue // a socket serves it now
				}
				if res == enqueuedMoved {
					time.Sleep(time.Millisecond)
					continue // its tomb names where, in a moment
				}
				return g.answer(res, closing)
			}
			if t, ok := g.tombOf(id); ok && t.movedTo != "" {
				// The bridge tries again, and finds the session's new
				// holder in the connection's registry record.
				return http.StatusServiceUnavailable, http.StatusServiceUnavailable, "session moved to gateway instance " + t.movedTo
			}
			if g.edge != nil && g.isClosed() {
				return shuttingDown()
			}
			return status, errNo, msg
		}
		if c.sess == nil && g.edge != nil && g.isClosed() {
			return shuttingDown()
		}
		var res enqueued
		switch {
		case closing:
			res = c.closeAfterQueue(sq)
		case c.sess != nil:
			frame[0] = prefixData
			res = c.send(sq, typ, frame)
		default:
			res = c.send(sq, typ, frame[1:])
		}
		if res == enqueuedEnded && c.sess != nil && try < deliverTries {
			// Its socket ended: the session is suspended (or ending) and
			// takes the push, once finish has made it the one found.
			time.Sleep(time.Millisecond)
			continue
		}
		if closing && res == enqueuedOK {
			// Unreachable at once, so later pushes get 404; the frames
			// queued before the close are written first, and the
			// handshake runs in the background because a client that
			// never answers would hold this request for seconds. The
			// reader then invokes cleanup.
			g.remove(c)
		}
		if !closing && res == enqueuedOverflow {
			// Unreachable at once: later pushes get 404 without waiting.
			g.remove(c)
		}
		return g.answer(res, closing)
	}
}

// deliverTries bounds deliver's rounds while a socket and its session hand
// over.
const deliverTries = 1000

func shuttingDown() (int, int, string) {
	// Transient, so the bridge tries again: by then this instance's record
	// is gone and the bridge knows its connections are lost, while a 404
	// now would announce them gone beside the shutdown.
	return http.StatusServiceUnavailable, http.StatusServiceUnavailable, "gateway instance shutting down"
}

// answer is a push's answer for what became of it.
func (g *Gateway) answer(res enqueued, closing bool) (int, int, string) {
	switch res {
	case enqueuedRepeat:
		g.repeated()
	case enqueuedEnded:
		if closing {
			return http.StatusOK, 0, "ok" // closing already, as asked
		}
		return http.StatusGone, http.StatusGone, "connection closed"
	case enqueuedOverflow:
		return http.StatusGone, http.StatusGone, fmt.Sprintf(
			"client not reading: its send queue is full (at most %d messages, %d bytes), or its session's buffer (%d bytes, %d for all sessions); closing it with 1008",
			g.opts.SendQueueMessages, g.opts.SendQueueBytes, g.opts.ResumeBuffer, g.opts.ResumeBufferTotal)
	}
	return http.StatusOK, 0, "ok"
}
