package gateway

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
)

// Resumable sessions (gateway/README.md, "Resumable sessions"): a client
// that asks for one (?resume=1) keeps its connection across a dropped
// socket for ResumeWindow. Its session numbers what it is sent, keeps each
// data frame until the client acknowledges it, counts what it sent that was
// passed on, and outlives the socket: pushes to a suspended session are
// kept, and the client reconnects with its key and how much it received,
// here or at any other instance (take.go), and gets the rest.
//
// A session is the connection for everyone else: the same id and token,
// one connect event when it starts and one disconnect event when it ends,
// whatever sockets it had between.

// The first byte of every message in session mode.
const (
	prefixData    = 'd'
	prefixControl = 'c'
)

// closeReset closes a socket whose resume was refused, after the reset
// control message that says why.
const closeReset websocket.StatusCode = 4001

// closeTryAgain closes a socket whose resume could not be decided now (the
// instance holding the session did not answer): the client resumes again
// after its backoff.
const closeTryAgain websocket.StatusCode = 1013

// Why a resume is refused: the reset's reason.
const (
	resetExpired = "expired" // not resumed within the window
	resetUnknown = "unknown" // no such session here, or a wrong key or count
	resetSlow    = "slow"    // its buffer overflowed while the client was away
	resetLost    = "lost"    // the instance that held it is gone
	resetOff     = "off"     // sessions are turned off
	resetClosed  = "closed"  // it ended otherwise (a backend closed it, the client closed it)
)

type sessState uint8

const (
	sessLive      sessState = iota // a socket serves it
	sessSuspended                  // its socket is gone; waiting for the client
	sessEnded                      // over, or moved to another instance
)

// session is one resumable connection.
type session struct {
	g      *Gateway
	id     string
	secret string // the key's secret part; the same for the session's life

	mu    sync.Mutex
	state sessState
	conn  *conn // the socket serving it while live
	// frames are the data frames sent (or kept to send) and not yet
	// acknowledged, numbered base+1 on, each with its 'd' prefix.
	frames []outgoing
	base   uint64
	bytes  int64
	in     uint64 // client data messages passed on
	// lastSeq is the highest Ws-Seq taken while no socket serves it (the
	// conn keeps its own while live).
	lastSeq uint64
	seqSeen bool
	why     string // why its last socket ended: the reason of its disconnect event
	closing bool   // a close push came while it was suspended
	movedTo string // the instance it was handed to (it ended here)
	expiry  *time.Timer
	// changed is closed, and replaced, whenever state changes.
	changed chan struct{}
}

// tomb is what an instance remembers of a session it no longer holds, to
// tell a returning client why, and to answer pushes for one that moved.
type tomb struct {
	reason  string // a reset reason, or "" for a session that moved
	movedTo string // the instance it moved to
	until   time.Time
}

// movedLife is how long the tomb of a session handed to another instance
// is kept (pushes routed here before bridges read the new holder from the
// registry are answered 503 meanwhile); the tomb of one that ended is kept
// two windows (a minute at least), while its client may still return.
// maxTombs bounds them.
const (
	movedLife = 10 * time.Minute
	maxTombs  = 200000
)

func (g *Gateway) sessionsOn() bool { return g.opts.ResumeWindow > 0 }

// newSession starts the session of a connection that asked for one.
func (g *Gateway) newSession(id string) *session {
	var b [18]byte
	_, _ = rand.Read(b[:])
	return &session{g: g, id: id, secret: base64.RawURLEncoding.EncodeToString(b[:]), changed: make(chan struct{})}
}

// holderName is the instance part of the keys this gateway hands out.
func (g *Gateway) holderName() string {
	if g.edge != nil {
		return g.opts.InstanceID
	}
	return "local"
}

// key is what the client presents to resume: the instance holding the
// session, its token, its secret.
func (s *session) key() string {
	return s.g.holderName() + subjects.EdgeIDSeparator + subjects.Token(s.id) + subjects.EdgeIDSeparator + s.secret
}

// parseKey splits a session key.
func parseKey(key string) (holder, id, secret string, err error) {
	parts := strings.Split(key, subjects.EdgeIDSeparator)
	if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
		return "", "", "", errors.New("malformed session key")
	}
	id, err = subjects.ConnID(parts[1])
	if err != nil {
		return "", "", "", fmt.Errorf("malformed session key: %w", err)
	}
	return parts[0], id, parts[2], nil
}

func (s *session) secretOK(secret string) bool {
	return subtle.ConstantTimeCompare([]byte(secret), []byte(s.secret)) == 1
}

// setState changes state and wakes whoever waits for a change. s.mu is held.
func (s *session) setState(st sessState) {
	s.state = st
	close(s.changed)
	s.changed = make(chan struct{})
}

// keep adds a data frame (prefixed) to what the session keeps for its
// client, and reports false when that passes a bound (the frame is not
// kept). s.mu is held.
func (s *session) keep(f outgoing) bool {
	n := int64(len(f.data))
	if s.bytes+n > s.g.opts.ResumeBuffer || s.g.sessBytes.Add(n) > s.g.opts.ResumeBufferTotal {
		if s.bytes+n <= s.g.opts.ResumeBuffer {
			s.g.sessBytes.Add(-n)
		}
		return false
	}
	s.frames = append(s.frames, f)
	s.bytes += n
	return true
}

// acked drops the frames up to received, which the client has; false when
// received is below what it acknowledged before or above what was sent.
// s.mu is held.
func (s *session) acked(received uint64) bool {
	if received < s.base || received-s.base > uint64(len(s.frames)) {
		return false
	}
	drop := int(received - s.base)
	var n int64
	for i := range drop {
		n += int64(len(s.frames[i].data))
		s.frames[i] = outgoing{}
	}
	s.frames = s.frames[drop:]
	if len(s.frames) == 0 {
		s.frames = nil
	}
	s.base = received
	s.bytes -= n
	s.g.sessBytes.Add(-n)
	return true
}

// release drops every frame kept and returns them. s.mu is held.
func (s *session) release() []outgoing {
	fs := s.frames
	s.frames = nil
	s.g.sessBytes.Add(-s.bytes)
	s.bytes = 0
	return fs
}

// control is a control message, either way.
type control struct {
	T        string  `json:"t"`
	Key      string  `json:"key,omitempty"`
	ID       string  `json:"id,omitempty"`
	Token    string  `json:"token,omitempty"`
	Resumed  *bool   `json:"resumed,omitempty"`
	In       *uint64 `json:"in,omitempty"`
	Out      *uint64 `json:"out,omitempty"`
	Received *uint64 `json:"received,omitempty"`
	Window   int     `json:"window,omitempty"`
	Reason   string  `json:"reason,omitempty"`
}

func controlFrame(m control) outgoing {
	b, _ := json.Marshal(m)
	return outgoing{typ: websocket.MessageText, data: append([]byte{prefixControl}, b...)}
}

// welcome is the first message on every socket of a session. s.mu is held.
func (s *session) welcome(resumed bool) outgoing {
	in, out := s.in, s.base+uint64(len(s.frames))
	return controlFrame(control{T: "welcome", Key: s.key(), ID: s.id, Token: subjects.Token(s.id),
		Resumed: &resumed, In: &in, Out: &out, Window: int((s.g.opts.ResumeWindow + time.Second - 1) / time.Second)})
}

// start makes c, just upgraded with ?resume=1, the first socket of a new
// session: its welcome is queued before anything else can be.
func (g *Gateway) start(c *conn) {
	s := c.sess
	s.mu.Lock()
	s.conn = c
	w := s.welcome(false)
	s.mu.Unlock()
	// Queued as pushes are, so the writer's accounting holds; nothing
	// else reaches c before its upgrade settles.
	c.queue = append(c.queue, w)
	c.queued += int64(len(w.data))
	c.pending++
	g.queuedBytes.Add(int64(len(w.data)))
	g.smu.Lock()
	g.sessions[s.id] = s
	g.smu.Unlock()
	g.sessLive.Add(1)
}

// session returns the session id this gateway holds, if any.
func (g *Gateway) session(id string) *session {
	g.smu.Lock()
	defer g.smu.Unlock()
	return g.sessions[id]
}

// tombOf returns what is remembered of a session no longer held.
func (g *Gateway) tombOf(id string) (tomb, bool) {
	g.smu.Lock()
	defer g.smu.Unlock()
	t, ok := g.tombs[id]
	if ok && time.Now().After(t.until) {
		delete(g.tombs, id)
		return tomb{}, false
	}
	return t, ok
}

// bury forgets session s and remembers why. g.smu is not held.
func (g *Gateway) bury(s *session, t tomb) {
	t.until = time.Now().Add(max(2*g.opts.ResumeWindow, time.Minute))
	if t.movedTo != "" {
		t.until = time.Now().Add(max(movedLife, 2*g.opts.ResumeWindow))
	}
	g.smu.Lock()
	defer g.smu.Unlock()
	if g.sessions[s.id] == s {
		delete(g.sessions, s.id)
	}
	if len(g.tombs) >= maxTombs {
		now := time.Now()
		for k, v := range g.tombs {
			if now.After(v.until) {
				delete(g.tombs, k)
			}
		}
		if len(g.tombs) >= maxTombs {
			clear(g.tombs)
		}
	}
	g.tombs[s.id] = t
}

// suspendable reports whether the end of c's socket suspends its session
// rather than ending it: the socket broke or went quiet (no close frame
// from the client, a ping unanswered), or this instance is shutting down.
// A close frame from the client, a close a backend asked for, a policy
// close, a failed transfer and the idle timeout end it.
func (c *conn) suspendable() bool {
	if c.sess == nil || c.announce.Load() != nil || c.clientClosed.Load() || !c.g.sessionsOn() {
		return false
	}
	switch disconnectReasons[c.why.Load()] {
	case discClient, discPing, discShutdown:
		return true
	}
	return false
}

// detach is the end of c's socket for its session: it suspends the session
// (true) or ends it. Called by finish before c is removed from the
// connections, so a push always finds one of the two; a push that finds c
// ended meanwhile finds the session (offer).
func (s *session) detach(c *conn, why string) bool {
	g := s.g
	suspend := c.suspendable()
	c.qmu.Lock()
	s.mu.Lock()
	unwritten := append(c.unwritten, c.end(nil)...)
	c.unwritten = nil
	if s.conn != c || s.state != sessLive {
		s.mu.Unlock()
		c.qmu.Unlock()
		return true // taken from it meanwhile: not this socket's to end
	}
	s.conn = nil
	s.lastSeq, s.seqSeen = c.lastSeq, c.seqSeen
	s.why = why
	g.sessLive.Add(-1)
	if !suspend {
		// Ended as a plain connection ends: what was written is
		// delivered as far as anyone can tell, what was not is
		// dead-lettered.
		s.setState(sessEnded)
		s.release()
		s.mu.Unlock()
		c.qmu.Unlock()
		g.bury(s, tomb{reason: resetClosed})
		g.dropSessionFrames(s.id, unwritten, why, "the connection ended ("+why+") before the frame was written")
		return false
	}
	// Suspended: the session keeps what was not written (and what was
	// written and not acknowledged) for the client's return.
	if g.isClosed() && why != discShutdown {
		// Its socket broke while the instance stops: it waits like the
		// ones the shutdown closed.
		s.why = discShutdown
	}
	s.setState(sessSuspended)
	s.expiry = time.AfterFunc(g.opts.ResumeWindow, func() { s.expire(resetExpired) })
	s.mu.Unlock()
	c.qmu.Unlock()
	g.sessSuspended.Add(1)
	g.m.sessionSuspends.Inc()
	g.log.Debug("session suspended", "conn", s.id, "why", why, "window", g.opts.ResumeWindow)
	return true
}

// expire ends a suspended session (not resumed in time, or its buffer
// overflowed): one disconnect event, with the reason its socket ended, and
// what it kept dead-lettered.
func (s *session) expire(reason string) {
	g := s.g
	s.mu.Lock()
	if s.state != sessSuspended {
		s.mu.Unlock()
		return
	}
	frames := s.retire()
	why := s.why
	if reason == resetSlow {
		why = discSlow
	} else if s.closing {
		why = discClosed
	}
	s.mu.Unlock()
	g.retired(s, tomb{reason: reason}, reason)
	g.log.Info("session ended while suspended", "conn", s.id, "reason", reason, "disconnect_reason", why, "frames_kept", len(frames))
	g.dropSessionFrames(s.id, frames, why, "the session ended ("+reason+", "+why+") before its client acknowledged the frame: it may have received it")
	g.m.disconnects.WithLabelValues(why).Inc()
	if g.edge != nil && why == discShutdown {
		g.edge.announce(s.id, subjects.ReasonShutdown)
		g.stats.cleanups.Add(1)
		return
	}
	g.ended(s.id, why, time.Now())
}

// sweptAway ends a suspended session whose connection another component
// announced lost (its registry record was swept while this instance was cut
// off from NATS): no event of its own, what it kept dead-lettered, and
// reset lost for its client. False when it was not suspended.
func (s *session) sweptAway() bool {
	g := s.g
	s.mu.Lock()
	if s.state != sessSuspended {
		s.mu.Unlock()
		return false
	}
	frames := s.retire()
	s.mu.Unlock()
	g.retired(s, tomb{reason: resetLost}, resetLost)
	g.dropSessionFrames(s.id, frames, discLost, "the connection was announced lost while this instance was cut off from NATS, before its client acknowledged the frame: it may have received it")
	return true
}

// retire ends suspended session s here: its expiry stopped, what it kept
// released (and returned), its state ended. s.mu is held; the caller then
// calls retired.
func (s *session) retire() []outgoing {
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	frames := s.release()
	s.setState(sessEnded)
	return frames
}

// retired counts a session retire ended, for the reason end of
// session_ends_total, and remembers t for its client. s.mu is not held.
func (g *Gateway) retired(s *session, t tomb, end string) {
	g.sessSuspended.Add(-1)
	g.bury(s, t)
	g.m.sessionEnds.WithLabelValues(end).Inc()
}

// dropSessionFrames dead-letters a session's data frames (control
// messages aside) without their prefix.
func (g *Gateway) dropSessionFrames(id string, frames []outgoing, why, cause string) {
	plain := make([]outgoing, 0, len(frames))
	for _, f := range frames {
		if len(f.data) > 0 && f.data[0] == prefixData {
			f.data = f.data[1:]
			plain = append(plain, f)
		}
	}
	if len(plain) == 0 {
		return
	}
	dropWhy := dropEnded
	if why == discSlow {
		dropWhy = dropSlow
	}
	g.dropFrames(id, plain, dropWhy, cause)
}

// offer gives a push to the session id when no socket of this instance
// serves it. handled is false when a socket serves it now (the caller
// looks the connection up again).
func (g *Gateway) offer(s *session, sq seq, f outgoing, closing bool) (handled bool, result enqueued) {
	s.mu.Lock()
	switch s.state {
	case sessLive:
		s.mu.Unlock()
		return false, 0
	case sessEnded:
		moved := s.movedTo != ""
		s.mu.Unlock()
		if moved {
			return true, enqueuedMoved
		}
		return true, enqueuedEnded
	}
	if sq.set && s.seqSeen && sq.n <= s.lastSeq {
		s.mu.Unlock()
		return true, enqueuedRepeat
	}
	if s.closing {
		s.mu.Unlock()
		return true, enqueuedEnded
	}
	if closing {
		s.closing = true
	} else if !s.keep(f) {
		s.mu.Unlock()
		g.log.Info("session ended: its buffer is full while its client is away", "conn", s.id,
			"resume_buffer", g.opts.ResumeBuffer, "resume_buffer_total", g.opts.ResumeBufferTotal)
		s.expire(resetSlow)
		return true, enqueuedOverflow
	}
	if sq.set {
		s.lastSeq, s.seqSeen = sq.n, true
	}
	s.mu.Unlock()
	return true, enqueuedOK
}

// resumeLocal attaches c, upgraded with ?resume=<key>, to the session this
// instance holds, and returns why not when it cannot ("" when it did). A
// session whose socket this instance still serves (the client saw the drop
// first) has that socket closed first.
func (g *Gateway) resumeLocal(c *conn, secret string, received uint64) string {
	s := g.session(c.id)
	if s == nil {
		if t, ok := g.tombOf(c.id); ok && t.reason != "" {
			return t.reason
		}
		return resetUnknown
	}
	if !s.secretOK(secret) {
		return resetUnknown
	}
	if !s.awaitSuspended() {
		return resetUnknown
	}
	return g.attach(s, c, received, true)
}

// awaitSuspended closes the socket serving s, if any, and waits for the
// session to be suspended (or ended); false when it is not suspended in
// time or ended.
func (s *session) awaitSuspended() bool {
	t := time.NewTimer(takeWait)
	defer t.Stop()
	for {
		s.mu.Lock()
		st, old, ch := s.state, s.conn, s.changed
		s.mu.Unlock()
		switch st {
		case sessSuspended:
			return true
		case sessEnded:
			return false
		}
		if old != nil && old.ws != nil {
			// Its reader sees the socket end and suspends the session:
			// a socket that broke is suspendable whatever it was doing.
			_ = old.ws.CloseNow()
		}
		select {
		case <-ch:
		case <-t.C:
			return false
		}
	}
}

// takeWait bounds the wait for a session's old socket to end.
const takeWait = 5 * time.Second

// attach makes c the socket of suspended session s, once the client has
// received frames up to received: c's queue starts with the welcome and the
// frames above received, and c is the connection pushes find from now on.
func (g *Gateway) attach(s *session, c *conn, received uint64, local bool) string {
	s.mu.Lock()
	if s.state != sessSuspended {
		s.mu.Unlock()
		return resetUnknown
	}
	if !s.acked(received) {
		s.mu.Unlock()
		g.log.Info("resume refused: the client's count does not fit the session", "conn", s.id,
			"received", received, "acknowledged", s.base, "sent", s.base+uint64(len(s.frames)))
		return resetUnknown
	}
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	c.sess = s
	c.lastSeq, c.seqSeen = s.lastSeq, s.seqSeen
	c.queue = append(c.queue, s.welcome(true))
	c.queue = append(c.queue, s.frames...)
	for _, f := range c.queue {
		c.queued += int64(len(f.data))
		g.queuedBytes.Add(int64(len(f.data)))
	}
	c.pending = len(c.queue)
	if s.closing {
		c.ended, c.closeWith = true, closeByPush
	}
	missed := len(s.frames)
	s.conn = c
	s.setState(sessLive)
	// Pushes find c from now on; they wait for its upgrade to settle.
	g.mu.Lock()
	g.conns[c.id] = c
	g.mu.Unlock()
	s.mu.Unlock()
	g.sessSuspended.Add(-1)
	g.sessLive.Add(1)
	where := "local"
	if !local {
		where = "remote"
	}
	g.m.sessionResumes.WithLabelValues(where).Inc()
	g.log.Debug("session resumed", "conn", s.id, "received", received, "replayed", missed, "from", where)
	return ""
}

// controlIn handles a control message from a client in session mode; false
// when it breaks the protocol.
func (c *conn) controlIn(body []byte) bool {
	var m control
	if err := json.Unmarshal(body, &m); err != nil || m.T != "ack" || m.Received == nil {
		c.g.log.Info("closing client: malformed control message in session mode", "conn", c.id, "err", err, "t", clipHeader(m.T))
		return false
	}
	s := c.sess
	s.mu.Lock()
	ok := s.conn == c && s.acked(*m.Received)
	s.mu.Unlock()
	if !ok {
		c.g.log.Info("closing client: it acknowledged more than it was sent", "conn", c.id, "received", *m.Received)
	}
	return ok
}

// passedOn counts a client data message passed on and acknowledges it.
func (c *conn) passedOn() {
	s := c.sess
	s.mu.Lock()
	s.in++
	in := s.in
	s.mu.Unlock()
	c.queueControl(controlFrame(control{T: "ack", In: &in}))
}

// queueControl queues a control message behind what is queued.
func (c *conn) queueControl(f outgoing) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.ended {
		return
	}
	n := int64(len(f.data))
	c.queue = append(c.queue, f)
	c.queued += n
	c.pending++
	c.g.queuedBytes.Add(n)
	c.startWriter()
}

// kick starts the writer for what was queued before the upgrade settled.
func (c *conn) kick() {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if len(c.queue) > 0 || c.closeWith != nil {
		c.startWriter()
	}
}

// refuseResume tells a client in session mode that its resume is refused
// (or that sessions are off), and closes it.
func refuseResume(ws *websocket.Conn, reason string) {
	f := controlFrame(control{T: "reset", Reason: reason})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ws.Write(ctx, f.typ, f.data) == nil {
		_ = ws.Close(closeReset, "session "+reason)
		return
	}
	_ = ws.CloseNow()
}

// parseReceived reads a resume's received count.
func parseReceived(v string) (uint64, error) {
	if v == "" {
		return 0, errors.New("resume without received=<count of data messages received>")
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("received=%q: want a count", clipHeader(v))
	}
	return n, nil
}

// drainSessions waits, at shutdown, until every suspended session has been
// taken by another instance or the window has passed, and ends what is
// left (reason shutdown). Pushes and takes are served meanwhile. A gateway
// that is not one of many instances (the emulator) has no other instance
// to hand them to, and ends them at once.
func (g *Gateway) drainSessions(start time.Time) {
	if g.sessSuspended.Load() == 0 {
		return
	}
	deadline := start
	if g.edge != nil {
		deadline = start.Add(g.opts.ResumeWindow)
		g.log.Info("waiting for suspended sessions to resume at other instances", "sessions", g.sessSuspended.Load(), "window", g.opts.ResumeWindow)
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for g.sessSuspended.Load() > 0 && time.Now().Before(deadline) {
		<-t.C
	}
	g.smu.Lock()
	left := make([]*session, 0, len(g.sessions))
	for _, s := range g.sessions {
		left = append(left, s)
	}
	g.smu.Unlock()
	if len(left) > 0 {
		g.log.Info("sessions not resumed before shutdown; ending them", "sessions", len(left))
	}
	for _, s := range left {
		s.expire(resetExpired)
	}
}
