package wsclient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// socket is one WebSocket of the session, with a reader and a writer
// goroutine. Only run creates and retires sockets.
type socket struct {
	conn   *websocket.Conn
	ctx    context.Context // cancelled when run retires the socket
	cancel context.CancelFunc
	// verdict is the reader's word on how the socket ended; it is the one
	// that counts, since only the reader sees the gateway's close frame.
	verdict chan verdict
	// dead is closed when the socket is known to be broken (Drop, a failed
	// write): the reader stops delivering and reads on only to learn how
	// it ended, the writer stops.
	dead     chan struct{}
	deadOnce sync.Once
	// flushed is closed by the writer when Close asked it to write what is
	// queued (flushing) and it has.
	flushed chan struct{}
	wg      sync.WaitGroup

	// Guarded by Client.mu.
	written  uint64 // the number of the last data message written on this socket
	flushing bool
}

func newSocket(conn *websocket.Conn) *socket {
	ctx, cancel := context.WithCancel(context.Background())
	return &socket{
		conn:    conn,
		ctx:     ctx,
		cancel:  cancel,
		verdict: make(chan verdict, 1),
		dead:    make(chan struct{}),
		flushed: make(chan struct{}),
	}
}

// markDead tells the socket's goroutines it is broken.
func (s *socket) markDead() { s.deadOnce.Do(func() { close(s.dead) }) }

// cut closes the socket without a close frame.
func (s *socket) cut() {
	s.markDead()
	_ = s.conn.CloseNow()
}

// start makes s the socket being served and starts its goroutines.
func (c *Client) start(s *socket) {
	c.mu.Lock()
	c.sock = s
	c.mu.Unlock()
	s.wg.Add(2)
	go c.readLoop(s)
	go c.writeLoop(s)
}

// readLoop reads socket s until it ends and says how it did in s.verdict.
func (c *Client) readLoop(s *socket) {
	defer s.wg.Done()
	ctx := s.ctx
	var resetReason *string // set by a reset control message
	draining := false       // the socket is broken or reset: deliver nothing more
	var cancel context.CancelFunc = func() {}
	defer func() { cancel() }()
	// stopDelivering is for a socket whose data no longer counts: read on
	// only to learn how it ends (a close frame, say 1000 or 4001), and not
	// for long.
	stopDelivering := func() {
		if !draining {
			draining = true
			ctx, cancel = context.WithTimeout(s.ctx, drainTimeout)
		}
	}
	for {
		typ, b, err := s.conn.Read(ctx)
		if err != nil {
			v := classify(err, c.plain)
			switch {
			case resetReason != nil:
				v = verdict{end: endReset, code: statusReset, reason: *resetReason, err: err}
			case errors.Is(err, websocket.ErrMessageTooBig):
				// The library closed with 1009, which ends the session
				// at the gateway too; resuming would meet it again.
				v = verdict{end: endOver, code: websocket.StatusMessageTooBig,
					err: fmt.Errorf("wsclient: a message from the gateway is larger than ReadLimit (%d bytes): %w", c.opts.ReadLimit, err)}
			}
			s.verdict <- v
			return
		}
		if draining {
			continue // received, not counted: the resume asks for it again
		}
		if c.plain {
			if int64(len(b)) > c.opts.ReadLimit {
				s.verdict <- c.tooBig(s, len(b))
				return
			}
			if !c.deliver(s, typ, b) {
				stopDelivering()
			}
			continue
		}
		if len(b) == 0 {
			s.verdict <- c.protocolError(s, fmt.Errorf("%w: an empty message", ErrProtocol))
			return
		}
		switch b[0] {
		case prefixData:
			if int64(len(b)-1) > c.opts.ReadLimit {
				s.verdict <- c.tooBig(s, len(b)-1)
				return
			}
			if !c.deliver(s, typ, b[1:]) {
				stopDelivering()
			}
		case prefixControl:
			m, err := parseControl(b[1:])
			if err != nil {
				s.verdict <- c.protocolError(s, err)
				return
			}
			switch m.T {
			case "ack":
				c.gotAck(s, m.In)
			case "reset":
				// The close with 4001 follows; data after a reset
				// belongs to no session.
				r := m.Reason
				resetReason = &r
				stopDelivering()
			case "welcome":
				s.verdict <- c.protocolError(s, fmt.Errorf("%w: a second welcome on one socket", ErrProtocol))
				return
			default:
				// A later protocol version's: nothing this client
				// must act on.
				c.log.Debug("wsclient: unknown control message ignored", "t", m.T)
			}
		default:
			s.verdict <- c.protocolError(s, fmt.Errorf("%w: a message starting with %q", ErrProtocol, b[0]))
			return
		}
	}
}

// protocolError ends the session: a close frame with 1002 tells the gateway
// to end it too, rather than keep it for a client that will not return.
func (c *Client) protocolError(s *socket, err error) verdict {
	_ = s.conn.Close(websocket.StatusProtocolError, "wsclient: protocol error")
	return verdict{end: endOver, code: websocket.StatusProtocolError, err: err}
}

// tooBig ends the session on a data message larger than ReadLimit, as the
// library does past its own limit: with 1009, which ends it at the gateway
// too, since a resume would meet the message again.
func (c *Client) tooBig(s *socket, n int) verdict {
	_ = s.conn.Close(websocket.StatusMessageTooBig, "message too big")
	return verdict{end: endOver, code: websocket.StatusMessageTooBig,
		err: fmt.Errorf("wsclient: a message from the gateway is larger than ReadLimit (%d > %d bytes): %w", n, c.opts.ReadLimit, websocket.ErrMessageTooBig)}
}

// deliver queues a received data message for Read, waiting while the read
// queue is full. It returns false, the message not taken, when the socket
// dies meanwhile: the message is not counted, so a resume asks for it.
func (c *Client) deliver(s *socket, typ websocket.MessageType, data []byte) bool {
	c.mu.Lock()
	for len(c.readQ) >= c.opts.ReadBuffer {
		wait := c.roomSig.wait()
		c.mu.Unlock()
		select {
		case <-wait:
		case <-s.dead:
			return false
		case <-s.ctx.Done():
			return false
		}
		c.mu.Lock()
	}
	c.readQ = append(c.readQ, Message{Type: typ, Data: data})
	c.stats.Received++
	if !c.plain {
		c.received++
		if c.received == c.ackSent+1 {
			c.ackDue = time.Now().Add(c.opts.AckAfter)
		}
		if c.received-c.ackSent == 1 || c.received-c.ackSent >= uint64(c.opts.AckEvery) {
			c.sendSig.notify() // the writer's ack timer or ack
		}
	}
	c.readSig.notify()
	c.mu.Unlock()
	return true
}

// gotAck takes the gateway's ack: its count of messages passed on.
func (c *Client) gotAck(s *socket, in uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if top := s.written; in > top {
		c.log.Warn("wsclient: the gateway acknowledged messages not written", "in", in, "written", top)
		in = top
	}
	c.ackPendingLocked(in)
}

// writeLoop writes socket s's frames: the data messages in the send buffer
// from the first the gateway has not passed on, and the acks, until the
// socket ends.
func (c *Client) writeLoop(s *socket) {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		c.mu.Lock()
		if s.written < c.outBase {
			s.written = c.outBase
		}
		now := time.Now()
		unacked := !c.plain && c.received > c.ackSent
		switch {
		case unacked && (c.received-c.ackSent >= uint64(c.opts.AckEvery) || !now.Before(c.ackDue)):
			n := c.received
			c.mu.Unlock()
			if !c.write(s, websocket.MessageText, ackFrame(n)) {
				return
			}
			c.mu.Lock()
			c.ackSent = max(c.ackSent, n)
			if c.received > c.ackSent {
				c.ackDue = time.Now().Add(c.opts.AckAfter)
			}
			c.mu.Unlock()
			continue
		case s.written < c.outBase+uint64(len(c.pending)):
			num := s.written + 1
			m := c.pending[num-c.outBase-1]
			// Counted as written before it is: the gateway's ack for it
			// may be read before this write returns. (One that fails is
			// written again on the next socket, and counted as resent.)
			s.written = num
			switch {
			case c.plain || num > c.maxWritten:
				c.maxWritten = num
				c.stats.Sent++
			default:
				c.stats.Resent++
			}
			c.mu.Unlock()
			if !c.write(s, m.typ, m.frame) {
				return
			}
			if c.plain {
				// No acks in plain mode: written is as far as it goes.
				c.mu.Lock()
				c.ackPendingLocked(num)
				c.mu.Unlock()
			}
			continue
		case s.flushing && unacked:
			// The last ack, right before Close's close frame.
			n := c.received
			c.mu.Unlock()
			if !c.write(s, websocket.MessageText, ackFrame(n)) {
				return
			}
			c.mu.Lock()
			c.ackSent = max(c.ackSent, n)
			c.mu.Unlock()
			continue
		case s.flushing:
			c.mu.Unlock()
			close(s.flushed)
			return
		}
		var due <-chan time.Time
		if unacked {
			timer.Reset(c.ackDue.Sub(now))
			due = timer.C
		}
		wait := c.sendSig.wait()
		c.mu.Unlock()
		select {
		case <-wait:
		case <-due:
		case <-s.dead:
			return
		case <-s.ctx.Done():
			return
		}
		timer.Stop()
	}
}

// write writes one frame, bounded by writeTimeout. A failed write marks the
// socket dead: the reader learns from the socket how it ended.
func (c *Client) write(s *socket, typ websocket.MessageType, frame []byte) bool {
	ctx, cancel := context.WithTimeout(s.ctx, writeTimeout)
	err := s.conn.Write(ctx, typ, frame)
	cancel()
	if err != nil {
		c.log.Debug("wsclient: write failed", "err", err)
		s.markDead()
		// A broken socket fails its reads too, and the reader says how
		// it ended; should it not, cut it so that it does.
		t := time.NewTimer(drainTimeout)
		defer t.Stop()
		select {
		case <-s.ctx.Done():
		case <-t.C:
			_ = s.conn.CloseNow()
		}
		return false
	}
	return true
}
