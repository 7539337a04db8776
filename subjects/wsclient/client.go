package wsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Time bounds the client does not expose as options: each covers a step
// that takes a round trip on a working network, so none is hit unless the
// network or the gateway is gone.
const (
	// writeTimeout bounds one frame's write; past it the socket is taken
	// for dead and the session resumed (the gateway's --write-timeout).
	writeTimeout = 10 * time.Second
	// flushTimeout bounds how long Close waits for queued messages to be
	// written before its close frame.
	flushTimeout = 5 * time.Second
	// drainTimeout bounds the wait for the gateway's close after a reset,
	// or for the rest of a socket the client knows is broken.
	drainTimeout = 2 * time.Second
)

// controlLimit is the least read limit of a socket: a control message (a
// welcome with its key, id and token) fits in it with room to spare.
const controlLimit = 16 << 10

// Client is one logical connection to the gateway, kept across sockets.
// Its methods are safe for concurrent use.
//
// One goroutine (run) owns the session's sockets: it connects, decides
// what a socket's end means, resumes or resets. Each socket has a reader
// and a writer goroutine of its own. What they share with Send and Read
// (the send buffer, the read queue, the counters) is guarded by mu, which
// is never held during network I/O.
type Client struct {
	opts  Options
	log   *slog.Logger
	base  *url.URL
	plain bool
	ev    *dispatcher

	// stopCtx is cancelled by Close: run then closes the socket and ends.
	stopCtx  context.Context
	stop     context.CancelFunc
	finished chan struct{} // closed when run is done
	closeErr error         // what Close returns; written before finished is closed

	mu   sync.Mutex
	sock *socket // the socket being served, for Drop; nil while reconnecting

	key, id, token string // the current session's, from its last welcome
	subprotocol    string // the one the gateway chose when the session started

	// The send buffer: data messages taken by Send and not acknowledged
	// by the gateway, numbered outBase+1, outBase+2…, ready to write.
	pending    []outgoing
	outBase    uint64 // the gateway's "in": messages it passed on
	maxWritten uint64 // the highest number written on any of the session's sockets

	// The read queue and what the gateway was told about it.
	readQ    []Message
	received uint64    // data messages received in this session
	ackSent  uint64    // the highest received count the gateway was told
	ackDue   time.Time // when the first message above ackSent must be acked

	over    bool  // no more sockets: Read drains readQ, then returns overErr
	overErr error // ErrClosed, wrapping why

	stats Stats

	// Wake-ups, each for one kind of waiter; see signal.
	sendSig  signal // writer: a message to write, an ack due, a flush
	spaceSig signal // Send: room in the send buffer, or over
	readSig  signal // Read: a message, or over
	roomSig  signal // reader: room in the read queue
}

// Message is one data message received.
type Message struct {
	Type websocket.MessageType
	Data []byte
}

// Stats are the client's counters since Dial, across sessions.
type Stats struct {
	Received uint64 // data messages received (each counted once)
	Sent     uint64 // data messages written (each counted once)
	Acked    uint64 // data messages the gateway said it passed on
	Resent   uint64 // data messages written again after a resume
	Lost     uint64 // data messages dropped by resets, not acknowledged by the old session
	Resumes  uint64 // sessions resumed
	Resets   uint64 // sessions reset
}

// outgoing is one data message in the send buffer, ready to write (with its
// 'd' in session mode).
type outgoing struct {
	typ   websocket.MessageType
	frame []byte
}

// signal wakes every goroutine waiting for a change of the state it is
// about. Its methods are called with Client.mu held; the channel is made
// only when someone waits, so the state changes nobody waits for cost
// nothing.
type signal struct{ ch chan struct{} }

func (s *signal) wait() <-chan struct{} {
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) notify() {
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// Dial connects to the gateway's WebSocket URL (ws://, wss://, or http://
// and https:// taken as such) and, unless opts.NoResume, starts a new
// session: it returns once the session's welcome has arrived, so ID and
// Token are known. Dial does not retry: an error means no session (an
// *UpgradeError when the gateway answered with an HTTP status,
// ErrSessionsOff, ErrProtocol when the gateway sent something else than a
// welcome). Once it has returned, the client reconnects on its own.
//
// The handshake is bounded by ctx and by opts.HandshakeTimeout; ctx has no
// effect after Dial returns.
func Dial(ctx context.Context, rawURL string, opts Options) (*Client, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("wsclient: dial: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return nil, fmt.Errorf("wsclient: dial %s: the scheme must be ws or wss", redact(u))
	}
	c := &Client{
		opts:     opts,
		log:      opts.Logger,
		base:     u,
		plain:    opts.NoResume,
		finished: make(chan struct{}),
	}
	s, w, err := c.connect(ctx, true)
	if err != nil {
		var re *resetError
		if errors.As(err, &re) && re.reason == reasonOff {
			err = ErrSessionsOff
		}
		return nil, fmt.Errorf("wsclient: dial %s: %w", redact(u), err)
	}
	c.stopCtx, c.stop = context.WithCancel(context.Background())
	c.ev = newDispatcher(opts.OnEvent)
	c.welcome(s, w, true)
	c.start(s)
	c.log.Debug("wsclient: session open", "id", w.ID)
	c.ev.emit(Event{Kind: Open})
	go c.run(s)
	return c, nil
}

// Send queues a data message (typ text or binary) to be written in order
// after the ones queued before. In session mode it stays in the send buffer
// until the gateway says it passed it on, and is written again after a
// resume if needed; Send blocks while the buffer is full, until ctx ends.
// data is copied. Send fails once Close was called or the client is over;
// a nil error does not mean the message reached the backend.
func (c *Client) Send(ctx context.Context, typ websocket.MessageType, data []byte) error {
	if typ != websocket.MessageText && typ != websocket.MessageBinary {
		return fmt.Errorf("wsclient: send: message type %v is neither text nor binary", typ)
	}
	var frame []byte
	if c.plain {
		frame = append([]byte(nil), data...)
	} else {
		frame = make([]byte, 1+len(data))
		frame[0] = prefixData
		copy(frame[1:], data)
	}
	c.mu.Lock()
	for {
		if c.over {
			err := c.overErr
			c.mu.Unlock()
			return err
		}
		if c.stopCtx.Err() != nil {
			c.mu.Unlock()
			return ErrClosed
		}
		if len(c.pending) < c.opts.SendBuffer {
			c.pending = append(c.pending, outgoing{typ: typ, frame: frame})
			c.sendSig.notify()
			c.mu.Unlock()
			return nil
		}
		wait := c.spaceSig.wait()
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return fmt.Errorf("wsclient: send: the send buffer is full (%d messages): %w", c.opts.SendBuffer, ctx.Err())
		case <-c.stopCtx.Done():
		}
		c.mu.Lock()
	}
}

// Read returns the next data message: each one once, in the order the
// gateway sent them, across resumes. After a Reset it goes on with the new
// session's, once those the old one delivered are read (what the old
// session kept and never delivered is the gateway's to dead-letter). It
// blocks until there is one or ctx ends. Once the client is over it returns what was still
// buffered, then an error matching ErrClosed (wrapping the gateway's close
// when there was one).
func (c *Client) Read(ctx context.Context) (Message, error) {
	c.mu.Lock()
	for len(c.readQ) == 0 {
		if c.over {
			err := c.overErr
			c.mu.Unlock()
			return Message{}, err
		}
		wait := c.readSig.wait()
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return Message{}, ctx.Err()
		}
		c.mu.Lock()
	}
	m := c.readQ[0]
	c.readQ[0] = Message{}
	c.readQ = c.readQ[1:]
	c.roomSig.notify()
	c.mu.Unlock()
	return m, nil
}

// ID returns the current session's connection id (secConnectionID); it
// changes after a Reset. Empty in plain mode, where the gateway does not
// tell it.
func (c *Client) ID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// Token returns the current session's connection token, the one backends
// send to; it changes after a Reset. Empty in plain mode.
func (c *Client) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Subprotocol returns the subprotocol the gateway chose for the session
// (from Options.Subprotocols), or "".
func (c *Client) Subprotocol() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subprotocol
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Done is closed once the client is over and OnEvent has returned from
// the Closed event: no callback runs after it.
func (c *Client) Done() <-chan struct{} { return c.ev.done }

// Close ends the session for good: it writes the messages still queued,
// acknowledges what was received, and closes the socket with 1000, which
// the gateway takes as the client leaving (one disconnect event). Called
// while reconnecting, it stops there: the gateway ends the session when
// its window passes. It waits for that (a few seconds at most on a broken
// network) and returns an error if queued messages could not be written.
// Close is safe from any goroutine, OnEvent included; calls after the
// first return what the first did, or nil when the gateway had ended the
// client before.
func (c *Client) Close() error {
	c.stop()
	<-c.finished
	return c.closeErr
}

// Drop cuts the current socket without a close frame, as a network drop
// would, and the client resumes as it does after one (in plain mode, the
// client is over). It is for tests, and for applications that know the
// network is gone before TCP does (a network change). Without a socket
// (reconnecting), it does nothing.
//
// Cutting a socket is all Drop does: what it means for the session is
// decided by the goroutine that owns the sockets, as for a real drop.
func (c *Client) Drop() {
	c.mu.Lock()
	s := c.sock
	c.mu.Unlock()
	if s != nil {
		s.cut()
	}
}

// run owns the session's sockets from Dial on: it serves one until it
// ends, then decides, from how it ended, to resume, to reset, or to stop.
func (c *Client) run(s *socket) {
	defer close(c.finished)
	for s != nil {
		v := c.serve(s)
		switch v.end {
		case endResume:
			c.log.Info("wsclient: socket lost, resuming", "id", c.ID(), "err", v.err)
			s = c.reconnect(false)
		case endReset:
			c.resetSession(v.reason, v.code)
			s = c.reconnect(true)
		case endClosed:
			c.closed(websocket.StatusNormalClosure)
			return
		default:
			c.log.Info("wsclient: closed by the gateway", "id", c.ID(), "code", int(v.code), "reason", v.reason, "err", v.err)
			c.finish(fmt.Errorf("%w: %w", ErrClosed, v.err), Event{Kind: Closed, Code: v.code, Reason: v.reason, Err: v.err})
			return
		}
	}
}

// serve waits for socket s to end, or for Close.
func (c *Client) serve(s *socket) verdict {
	select {
	case v := <-s.verdict:
		c.retire(s)
		if v.end == endOver && errors.Is(v.err, ErrProtocol) {
			c.log.Warn("wsclient: protocol error", "err", v.err)
		}
		return v
	case <-c.stopCtx.Done():
		return c.closeSocket(s)
	}
}

// closeSocket is Close on a live socket: let the writer write what is
// queued and a last ack, then close with 1000.
func (c *Client) closeSocket(s *socket) verdict {
	c.mu.Lock()
	s.flushing = true
	c.sendSig.notify()
	c.mu.Unlock()
	t := time.NewTimer(flushTimeout)
	defer t.Stop()
	select {
	case <-s.flushed:
		if err := s.conn.Close(websocket.StatusNormalClosure, ""); err != nil {
			c.log.Debug("wsclient: close handshake", "err", err)
		}
	case v := <-s.verdict:
		// The socket ended first: nothing more can be written.
		c.log.Debug("wsclient: socket ended while closing", "err", v.err)
	case <-t.C:
		c.log.Warn("wsclient: queued messages not written in time, closing anyway", "timeout", flushTimeout)
	}
	c.retire(s)
	return verdict{end: endClosed}
}

// closed finishes a client Close ended, code the close frame it sent (0:
// none, there was no socket), and sets what Close returns.
func (c *Client) closed(code websocket.StatusCode) {
	c.mu.Lock()
	var unsent int
	for i := range c.pending {
		if c.plain || c.outBase+uint64(i)+1 > c.maxWritten {
			unsent++
		}
	}
	c.mu.Unlock()
	if unsent > 0 {
		c.closeErr = fmt.Errorf("wsclient: close: %d queued messages were not written", unsent)
	}
	c.finish(ErrClosed, Event{Kind: Closed, Code: code})
}

// retire stops socket s for good and waits for its goroutines, so that no
// trace of it touches the next one's state.
func (c *Client) retire(s *socket) {
	c.mu.Lock()
	if c.sock == s {
		c.sock = nil
	}
	c.mu.Unlock()
	s.cut()
	s.cancel()
	s.wg.Wait()
}

// reconnect dials until a socket is up, with backoff. fresh asks for a new
// session. It returns nil when the client is over (Close, or an answer that
// says trying again is pointless), having finished it.
func (c *Client) reconnect(fresh bool) *socket {
	for attempt := 0; ; attempt++ {
		d := backoff(attempt, c.opts.MinBackoff, c.opts.MaxBackoff, rand.Int64N)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-c.stopCtx.Done():
			t.Stop()
			c.closed(0)
			return nil
		}
		s, w, err := c.connect(c.stopCtx, fresh)
		if err == nil {
			if !c.plain && !fresh && !w.Resumed {
				c.resetSession(reasonNotResumed, 0)
				fresh = true
			}
			resumed := c.welcome(s, w, fresh)
			// Serving before the event: whoever hears of it can Drop
			// this socket.
			c.start(s)
			if resumed {
				c.log.Info("wsclient: session resumed", "id", w.ID, "attempts", attempt+1)
				c.ev.emit(Event{Kind: Resumed})
			} else {
				c.log.Info("wsclient: new session", "id", w.ID)
				c.ev.emit(Event{Kind: Open})
			}
			return s
		}
		if c.stopCtx.Err() != nil {
			c.closed(0)
			return nil
		}
		var re *resetError
		var ue *UpgradeError
		switch {
		case errors.As(err, &re) && fresh && re.reason == reasonOff:
			c.finish(fmt.Errorf("%w: %w", ErrClosed, ErrSessionsOff), Event{Kind: Closed, Code: statusReset, Reason: re.reason, Err: ErrSessionsOff})
			return nil
		case errors.As(err, &re) && !fresh && re.reason == reasonClosed:
			// The session ended here while the client was away and a
			// close was what ended it: over, not to be started again.
			c.finish(fmt.Errorf("%w: session %s", ErrClosed, re.reason), Event{Kind: Closed, Code: statusReset, Reason: re.reason, Err: re})
			return nil
		case errors.As(err, &re) && !fresh:
			c.resetSession(re.reason, statusReset)
			fresh = true
			attempt = -1
			continue
		case errors.As(err, &ue) && ue.final(), errors.Is(err, ErrProtocol):
			c.log.Warn("wsclient: reconnect refused for good", "err", err)
			c.finish(fmt.Errorf("%w: %w", ErrClosed, err), Event{Kind: Closed, Err: err})
			return nil
		}
		if v := classify(err, false); v.end == endOver && v.code != 0 {
			c.log.Info("wsclient: closed by the gateway while reconnecting", "code", int(v.code), "reason", v.reason)
			c.finish(fmt.Errorf("%w: %w", ErrClosed, err), Event{Kind: Closed, Code: v.code, Reason: v.reason, Err: err})
			return nil
		}
		c.log.Debug("wsclient: reconnect failed", "attempt", attempt+1, "err", err)
	}
}

// connect opens a socket and, in session mode, reads its welcome. It does
// not touch the session's state (welcome does, once the caller decided).
func (c *Client) connect(ctx context.Context, fresh bool) (*socket, control, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.HandshakeTimeout)
	defer cancel()
	target := c.base.String()
	protocols := c.opts.Subprotocols
	if !c.plain {
		c.mu.Lock()
		target = sessionURL(c.base, fresh, c.key, c.received)
		if !fresh && c.subprotocol != "" {
			protocols = []string{c.subprotocol}
		}
		c.mu.Unlock()
	}
	conn, resp, err := websocket.Dial(ctx, target, &websocket.DialOptions{
		HTTPClient:   c.opts.HTTPClient,
		HTTPHeader:   c.opts.Header,
		Subprotocols: protocols,
	})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			return nil, control{}, &UpgradeError{StatusCode: resp.StatusCode, Err: err}
		}
		return nil, control{}, err
	}
	// The library's limit keeps a huge frame out of memory; it leaves room
	// for the prefix, and for a welcome whatever ReadLimit is. The reader
	// holds data messages to ReadLimit itself.
	conn.SetReadLimit(max(c.opts.ReadLimit+1, controlLimit))
	if c.plain {
		return newSocket(conn), control{}, nil
	}
	_, b, err := conn.Read(ctx)
	if err != nil {
		_ = conn.CloseNow()
		if ctx.Err() != nil && websocket.CloseStatus(err) == -1 {
			return nil, control{}, fmt.Errorf("no welcome within %v (does the gateway support resumable sessions?): %w", c.opts.HandshakeTimeout, err)
		}
		if websocket.CloseStatus(err) == statusReset {
			var ce websocket.CloseError
			errors.As(err, &ce)
			return nil, control{}, &resetError{reason: ce.Reason}
		}
		return nil, control{}, fmt.Errorf("waiting for the welcome: %w", err)
	}
	w, err := parseWelcome(b)
	if err != nil {
		var re *resetError
		if errors.As(err, &re) {
			// The close with 4001 follows; read it so the gateway's
			// close handshake completes, but not for long.
			dctx, dcancel := context.WithTimeout(context.Background(), drainTimeout)
			_, _, _ = conn.Read(dctx)
			dcancel()
		}
		_ = conn.CloseNow()
		return nil, control{}, err
	}
	return newSocket(conn), w, nil
}

// welcome makes socket s the session's, from its welcome w (none in plain
// mode): keeps the key, id and token, drops from the send buffer what the
// gateway passed on, and has s's writer start after it. It reports whether
// the session was resumed; fresh says a new one was asked for.
func (c *Client) welcome(s *socket, w control, fresh bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.key, c.id, c.token = w.Key, w.ID, w.Token
	resumed := w.Resumed && !fresh
	if !resumed {
		c.subprotocol = s.conn.Subprotocol()
	}
	if c.plain {
		return false
	}
	in := w.In
	top := c.outBase + uint64(len(c.pending))
	switch {
	case in < c.outBase:
		// The gateway acknowledged more before: what it forgot is gone
		// from the buffer, so it cannot be sent again.
		c.log.Warn("wsclient: the gateway's count is below what it acknowledged", "in", in, "acked", c.outBase)
		in = c.outBase
	case in > top:
		c.log.Warn("wsclient: the gateway counts more messages than were sent", "in", in, "sent", top)
		in = top
	}
	c.ackPendingLocked(in)
	s.written = c.outBase
	// The resume's received=N told the gateway as much as an ack.
	c.ackSent = c.received
	if resumed {
		c.stats.Resumes++
	}
	return resumed
}

// ackPendingLocked drops from the send buffer the messages numbered up to
// in: the gateway passed them on.
func (c *Client) ackPendingLocked(in uint64) {
	if in <= c.outBase {
		return
	}
	n := min(in-c.outBase, uint64(len(c.pending)))
	clear(c.pending[:n])
	c.pending = c.pending[n:]
	c.outBase += n
	if !c.plain {
		c.stats.Acked += n
	}
	c.spaceSig.notify()
}

// resetSession forgets the session the gateway refused: its counters, and
// what it had not acknowledged (see ResetError).
func (c *Client) resetSession(reason string, code websocket.StatusCode) {
	c.mu.Lock()
	lost := len(c.pending)
	unsent := make([]Message, 0, lost)
	for _, m := range c.pending {
		unsent = append(unsent, Message{Type: m.typ, Data: m.frame[1:]})
	}
	clear(c.pending)
	c.pending = nil
	c.outBase, c.maxWritten = 0, 0
	c.received, c.ackSent = 0, 0
	c.key = ""
	c.stats.Resets++
	c.stats.Lost += uint64(lost)
	c.spaceSig.notify()
	id := c.id
	c.mu.Unlock()
	err := &ResetError{Reason: reason, Lost: lost, Unsent: unsent}
	c.log.Info("wsclient: session reset, starting a new one", "id", id, "reason", reason, "lost", lost)
	c.ev.emit(Event{Kind: Reset, Reason: reason, Code: code, Err: err})
}

// finish ends the client: Read drains what is buffered, then returns err,
// and Send returns it.
func (c *Client) finish(err error, ev Event) {
	c.mu.Lock()
	c.over = true
	c.overErr = err
	c.sock = nil
	c.readSig.notify()
	c.spaceSig.notify()
	c.sendSig.notify()
	c.mu.Unlock()
	c.ev.emit(ev)
}
