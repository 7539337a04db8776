package gateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
	"github.com/wsbridge/wsbridge/subjects"
)

const (
	statusGoingAway = websocket.StatusGoingAway
	statusNormal    = websocket.StatusNormalClosure
	statusInternal  = websocket.StatusInternalError
)

// conn is one accepted client. It is kept small on purpose: the emulator is
// sized for 10,000 connections, so an idle connection has no writer
// goroutine and no timer. A goroutine of its own reads it; pushes queue
// their frames and a writer goroutine, started when the queue fills and
// gone when it empties, writes them in order; one janitor goroutine per
// gateway enforces the idle timeout.
type conn struct {
	g  *Gateway
	id string
	// ready is closed once the upgrade is decided; ws is set before that
	// when it succeeded and must not be read before ready is closed.
	ready   chan struct{}
	ws      *websocket.Conn
	ip      string        // client IP, for the per-IP count
	last    atomic.Int64  // g.since() of the last data frame either way, or client ping
	pinged  atomic.Int64  // g.since() of the last ping the gateway sent
	ponged  atomic.Int64  // g.since() of the last pong; below pinged: a pong is awaited
	pings   atomic.Int32  // pings written
	closing atomic.Bool   // a close handshake was started by the gateway
	why     atomic.Int32  // index in disconnectReasons of why it ended; 0 = client
	in      inboundLimits // read by serve alone
	// announce, when set, is the disconnect reason this edge instance
	// announces the connection with instead of invoking cleanup:
	// shutdown, or lost when its registry record was swept while this
	// instance was cut off from NATS.
	announce atomic.Pointer[string]

	// The hijacked socket, set by the upgrade (smallBuffers): serve waits
	// on it between messages (awaitFrame).
	fc *finConn

	// sess is the resumable session this socket serves (session.go), set
	// before the connection is reachable; nil for a plain connection.
	sess *session
	// clientClosed: the client sent a close frame (its session ends).
	clientClosed atomic.Bool
	// unwritten are a session socket's frames dropped unwritten (drop);
	// guarded by qmu.
	unwritten []outgoing

	// The send queue: pushes taken for the connection and not yet
	// written, in order, drained by one writer goroutine that runs only
	// while there is something to write (writeLoop). A push is answered
	// once its frame is queued, so a client that does not read holds no
	// push request, only its own queue, which is bounded.
	qmu       sync.Mutex
	queue     []outgoing // guarded by qmu
	queued    int64      // bytes of queue and of the frame being written; guarded by qmu
	pending   int        // messages likewise; guarded by qmu
	writing   bool       // writeLoop runs; guarded by qmu
	ended     bool       // takes no more pushes (closed by a push, overflowed, or over); guarded by qmu
	closeWith *closeReq  // how writeLoop closes the connection once the queue is empty; guarded by qmu
	lastSeq   uint64     // highest Ws-Seq taken; guarded by qmu
	seqSeen   bool       // lastSeq holds one; guarded by qmu

	// The janitor's bucket (wheel.go); guarded by the shard's lock.
	wprev, wnext *conn
	wslot        int32 // bucket index + 1; 0: in none
	wshard       uint8
}

var (
	announceShutdown = subjects.ReasonShutdown
	announceLost     = subjects.ReasonLost
)

// disconnectReasons are the values of conn.why.
var disconnectReasons = [...]string{discClient, discClosed, discIdle, discPing, discError, discShutdown, discInvalid, discSlow, discRate}

func reasonIndex(reason string) int32 {
	for i, r := range disconnectReasons {
		if r == reason {
			return int32(i)
		}
	}
	return 0
}

// settle publishes the outcome of the upgrade: ws, or nil when the
// connection was refused.
func (c *conn) settle(ws *websocket.Conn) {
	c.ws = ws
	close(c.ready)
}

// isReady reports whether the upgrade is decided, without waiting.
func (c *conn) isReady() bool {
	select {
	case <-c.ready:
		return true
	default:
		return false
	}
}

// accepted waits, at most until ctx ends, for the upgrade to be decided and
// returns the WebSocket, or nil when the connection was refused. A push can
// arrive before the client has its 101: the register function publishes the
// connect event, and a backend may answer it at once.
func (c *conn) accepted(ctx context.Context) (*websocket.Conn, error) {
	select {
	case <-c.ready:
		return c.ws, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// since is the monotonic time since the gateway started.
func (g *Gateway) since() int64 { return int64(time.Since(g.epoch)) }

func (c *conn) touch() { c.last.Store(c.g.since()) }

// close starts the close handshake once; later calls do nothing, so the
// first reason (push, idle, shutdown, transfer failure) is what the client
// sees; why is the disconnects_total reason.
func (c *conn) close(code websocket.StatusCode, reason, why string) {
	if c.closing.CompareAndSwap(false, true) {
		c.why.Store(reasonIndex(why))
		_ = c.ws.Close(code, reason)
	}
}

// outgoing is one queued frame, and the Ws-Seq of its push.
type outgoing struct {
	typ  websocket.MessageType
	data []byte
	seq  seq
}

// closeReq is how the writer closes a connection once its queue is empty.
type closeReq struct {
	code   websocket.StatusCode
	reason string
	why    string
}

var (
	// closeByPush follows the frames queued before a close push.
	closeByPush = &closeReq{statusNormal, "", discClosed}
	// closeSlow ends a client whose send queue overflowed: 1008, as a
	// client that does not read breaks the one rule a push connection has.
	closeSlow = &closeReq{websocket.StatusPolicyViolation, "send queue full: client not reading", discSlow}
)

// enqueued is what became of a push offered to a connection's queue.
type enqueued int

const (
	enqueuedOK       enqueued = iota // queued in order (a close: will follow what is queued)
	enqueuedRepeat                   // its Ws-Seq is at or below the last one taken: dropped
	enqueuedEnded                    // the connection takes no more pushes
	enqueuedOverflow                 // the queue is full: the client is closed with 1008
	enqueuedMoved                    // its session was handed to another instance
)

// send queues one frame unless s repeats a sequence already taken, the
// connection takes no more pushes, or the queue is full; in that last case
// the client is closed with 1008 once the frame being written is done (it
// has no place for what is queued, which is dropped). Checking s, queueing
// and raising lastSeq are one step under qmu, and the queue is written in
// its order by one writer: two bridges pushing the same commands at once
// (one cut off and not yet aware of it) write each once, never an older
// one after a newer one.
func (c *conn) send(s seq, typ websocket.MessageType, data []byte) enqueued {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.repeats(s) {
		return enqueuedRepeat
	}
	if c.ended {
		return enqueuedEnded
	}
	n := int64(len(data))
	// An empty queue takes any frame the size limit allows, so the byte
	// bound needs no relation to --max-message-size. A session's queue is
	// part of what the session keeps (every frame until the client
	// acknowledges it), bounded by ResumeBuffer instead: a resume queues
	// all the client missed at once, which may be more messages than a
	// send queue takes.
	if c.sess == nil && c.pending > 0 && (c.pending >= c.g.opts.SendQueueMessages || c.queued+n > c.g.opts.SendQueueBytes) {
		c.g.log.Info("closing client: send queue full", "conn", c.id,
			"queued_messages", c.pending, "queued_bytes", c.queued, "push_bytes", n)
		c.dropLocked(c.end(closeSlow), dropSlow, fmt.Sprintf(
			"client not reading: its send queue overflowed (at most %d messages, %d bytes) and it was closed with 1008; the frame was queued, never written",
			c.g.opts.SendQueueMessages, c.g.opts.SendQueueBytes))
		return enqueuedOverflow
	}
	f := outgoing{typ: typ, data: data, seq: s}
	if c.sess != nil && !c.keepInSession(f) {
		c.g.log.Info("closing client: its session's buffer is full (it does not acknowledge what it receives)", "conn", c.id,
			"resume_buffer", c.g.opts.ResumeBuffer, "resume_buffer_total", c.g.opts.ResumeBufferTotal)
		c.end(closeSlow)
		return enqueuedOverflow
	}
	c.queue = append(c.queue, f)
	c.queued += n
	c.pending++
	c.g.queuedBytes.Add(n)
	c.take(s)
	c.startWriter()
	return enqueuedOK
}

// closeAfterQueue asks for the close handshake (1000) once every frame
// queued before it is written.
func (c *conn) closeAfterQueue(s seq) enqueued {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.repeats(s) {
		return enqueuedRepeat
	}
	if c.ended {
		return enqueuedEnded
	}
	c.ended, c.closeWith = true, closeByPush
	c.take(s)
	c.startWriter()
	return enqueuedOK
}

// repeats reports whether s is at or below the last sequence taken. qmu is
// held.
func (c *conn) repeats(s seq) bool { return s.set && c.seqSeen && s.n <= c.lastSeq }

// take records s as the last sequence taken. qmu is held.
func (c *conn) take(s seq) {
	if s.set {
		c.lastSeq, c.seqSeen = s.n, true
	}
}

// end takes no more pushes, drops what is queued and not yet being
// written, and has the writer close the connection with how once the frame
// being written is done (how nil: the connection is over already). It
// returns the frames dropped: their pushes were answered as delivered, so
// the caller hands them to dropFrames. qmu is held.
func (c *conn) end(how *closeReq) []outgoing {
	c.ended = true
	c.closeWith = how
	dropped := c.queue
	for _, m := range dropped {
		n := int64(len(m.data))
		c.queued -= n
		c.pending--
		c.g.queuedBytes.Add(-n)
	}
	c.queue = nil
	if how != nil {
		c.startWriter()
	}
	return dropped
}

// startWriter runs writeLoop unless it runs. qmu is held, and the
// connection is not over, so the gateway's wait group is still held by its
// reader (or its handler) and may grow.
func (c *conn) startWriter() {
	if c.writing {
		return
	}
	c.writing = true
	c.g.wg.Add(1)
	go c.writeLoop()
}

// writeLoop writes the queue in order, one frame at a time, each within
// WriteTimeout, and returns when it is empty, closing the connection first
// when that was asked for. A frame not written in time means a client that
// does not read: it is disconnected.
func (c *conn) writeLoop() {
	defer c.g.wg.Done()
	for {
		c.qmu.Lock()
		if len(c.queue) == 0 {
			c.writing = false
			how := c.closeWith
			c.closeWith = nil
			c.qmu.Unlock()
			if how != nil {
				c.close(how.code, how.reason, how.why)
			}
			return
		}
		m := c.queue[0]
		c.queue[0] = outgoing{}
		c.queue = c.queue[1:]
		c.qmu.Unlock()

		err := c.write(m.typ, m.data)

		c.qmu.Lock()
		n := int64(len(m.data))
		c.queued -= n
		c.pending--
		c.g.queuedBytes.Add(-n)
		var dropped []outgoing
		if err != nil {
			// The frame that failed (or stalled: it may have been
			// written, whole or in part) and the ones behind it.
			dropped = append([]outgoing{m}, c.end(nil)...)
			c.writing = false
		}
		c.qmu.Unlock()
		if err != nil {
			why, cause := dropEnded, "writing to the client failed: "+err.Error()
			if errors.Is(err, errStalled) {
				why = dropSlow
				cause = fmt.Sprintf("client not reading: a frame was not written within the write timeout (%v) and it was closed", c.g.opts.WriteTimeout)
			}
			c.drop(dropped, why, cause)
			c.writeFailed(err)
			return
		}
	}
}

// drop hands frames taken and never written to dropFrames. A session's
// are set aside instead (unwritten): the session keeps them for its client
// if it is suspended, and dead-letters them if it ends (detach).
func (c *conn) drop(frames []outgoing, why, cause string) {
	if c.sess == nil {
		c.g.dropFrames(c.id, frames, why, cause)
		return
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	c.unwritten = append(c.unwritten, frames...)
}

// dropLocked is drop with qmu held.
func (c *conn) dropLocked(frames []outgoing, why, cause string) {
	if c.sess == nil {
		c.g.dropFrames(c.id, frames, why, cause)
		return
	}
	c.unwritten = append(c.unwritten, frames...)
}

// keepInSession adds a frame to what c's session keeps; false past its
// bounds. qmu is held.
func (c *conn) keepInSession(f outgoing) bool {
	s := c.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keep(f)
}

// writeFailed ends a connection whose frame could not be written. One whose
// frame stalled was marked slow and is closed at once; on any other error
// the connection is ending already (closed by this instance, or broken),
// which its reader sees.
func (c *conn) writeFailed(err error) {
	if !errors.Is(err, errStalled) {
		c.g.log.Debug("write failed", "conn", c.id, "err", err)
		return
	}
	c.g.log.Info("closing client: write stalled", "conn", c.id, "write_timeout", c.g.opts.WriteTimeout)
	_ = c.ws.CloseNow()
}

// errStalled is a frame not written within WriteTimeout.
var errStalled = errors.New("frame not written within the write timeout: client not reading")

// write sends one frame within WriteTimeout. Past it the connection is
// marked as ended slow (unless it is closing for another reason) before
// coder/websocket closes it, a frame not being something to abandon half
// written: its reader, which sees the close, counts it so.
func (c *conn) write(typ websocket.MessageType, data []byte) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var state atomic.Int32 // 0 writing, 1 written, 2 stalled
	t := time.AfterFunc(c.g.opts.WriteTimeout, func() {
		if state.CompareAndSwap(0, 2) {
			if c.closing.CompareAndSwap(false, true) {
				c.why.Store(reasonIndex(discSlow))
			}
			cancel()
		}
	})
	err := c.ws.Write(ctx, typ, data)
	if !state.CompareAndSwap(0, 1) {
		// Marked: whether or not the frame made it, the connection ends.
		return errStalled
	}
	t.Stop()
	if err != nil {
		return err
	}
	c.touch()
	c.g.stats.framesOut.Add(1)
	c.g.m.framesOut.Inc()
	return nil
}

// firstProtocol picks the one subprotocol of a registration reply. The
// contract says ONE; a function that echoes the client's list gets its
// first entry rather than an invalid header.
func firstProtocol(p string) string {
	p, _, _ = strings.Cut(p, ",")
	return strings.TrimSpace(p)
}

func (g *Gateway) serveWS(w http.ResponseWriter, r *http.Request) {
	if !g.enter() {
		g.refuse(w, http.StatusServiceUnavailable, "gateway is shutting down")
		return
	}
	defer g.wg.Done()

	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeReply(w, http.StatusMethodNotAllowed, http.StatusMethodNotAllowed, "WebSocket upgrade needs GET")
		return
	}
	// Checked before the register function runs: a plain GET must not
	// register a connection that never exists.
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		writeReply(w, http.StatusUpgradeRequired, http.StatusUpgradeRequired, "WebSocket upgrade required")
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && !g.originAllowed(origin) {
		g.log.Info("connection refused: origin not allowed", "origin", clipHeader(origin))
		g.refuse(w, http.StatusForbidden, "origin not allowed")
		return
	}
	if n := g.slots.Add(1); n > int64(g.opts.MaxConnections) {
		g.slots.Add(-1)
		g.log.Warn("connection refused: limit reached", "max_connections", g.opts.MaxConnections)
		g.refuse(w, http.StatusServiceUnavailable, "too many connections")
		return
	}
	handedOff := false // the slot and the IP count go with the connection
	defer func() {
		if !handedOff {
			g.slots.Add(-1)
		}
	}()
	ip := g.clientIP(r)
	if !g.takeIP(ip) {
		g.log.Info("connection refused: per-IP limit reached", "ip", ip, "max_connections_per_ip", g.opts.MaxConnectionsPerIP)
		g.refuse(w, http.StatusTooManyRequests, "too many connections from this address")
		return
	}
	defer func() {
		if !handedOff {
			g.releaseIP(ip)
		}
	}()

	resume := r.URL.Query().Get("resume")
	switch {
	case resume == "":
	case !g.sessionsOn():
		g.refuseSession(w, r, resetOff)
		return
	case resume != "1":
		if g.resume(w, r, ip, resume) {
			handedOff = true
		}
		return
	}

	id := g.newConnID()
	if g.edge != nil {
		g.edge.handedOut(id)
	}
	log := g.log.With("conn", id)
	// Known to pushes from now on, so a reply to the connect event that
	// overtakes the upgrade waits for it instead of finding nothing.
	c := &conn{g: g, id: id, ip: ip, ready: make(chan struct{})}
	if !g.add(c) {
		g.refuse(w, http.StatusServiceUnavailable, "gateway is shutting down")
		return
	}
	refuse := func(status, errNo int, msg, result string) {
		g.remove(c)
		c.settle(nil)
		g.stats.rejected.Add(1)
		g.m.connects.WithLabelValues(result).Inc()
		writeReply(w, status, errNo, msg)
	}
	ev := connectingEvent{
		RequestContext: requestContext{
			ServiceID:       g.opts.ServiceID,
			Path:            r.URL.Path,
			HTTPMethod:      http.MethodGet,
			RequestID:       scfrpc.NewRequestID(),
			SourceIP:        ip,
			Stage:           g.opts.Stage,
			WebsocketEnable: true,
		},
		WebSocket: connectingWebSocket{
			Action:                 subjects.ActionConnecting,
			SecConnectionID:        id,
			SecWebSocketProtocol:   headerList(r.Header, "Sec-WebSocket-Protocol"),
			SecWebSocketExtensions: headerList(r.Header, "Sec-WebSocket-Extensions"),
		},
	}
	out, err := g.invoke(r.Context(), "register", g.opts.Register, ev)
	var rep subjects.GatewayReply
	if err == nil {
		if jerr := json.Unmarshal(out, &rep); jerr != nil {
			err = errors.New("register function: reply is not a JSON object: " + jerr.Error())
		}
	}
	if err != nil {
		g.writes.observe(writeEvents, g.since(), err)
		log.Warn("connection rejected: register failed", "err", err)
		refuse(http.StatusBadGateway, http.StatusBadGateway, err.Error(), connectError)
		g.forgetFailed(id)
		return
	}
	g.writes.observeReply(g.since(), rep.ErrNo, rep.ErrMsg)
	if rep.ErrNo != 0 {
		status := registerStatus(rep.ErrNo)
		if status == http.StatusForbidden {
			log.Info("connection rejected by register function", "errNo", rep.ErrNo, "errMsg", rep.ErrMsg)
			refuse(status, rep.ErrNo, rep.ErrMsg, connectRejected)
			return
		}
		// The server's fault (NATS, configuration): a record the
		// function may have stored must go.
		log.Warn("connection rejected: register failed", "errNo", rep.ErrNo, "errMsg", rep.ErrMsg)
		refuse(status, rep.ErrNo, rep.ErrMsg, connectError)
		g.forgetFailed(id)
		return
	}

	opts := c.acceptOptions()
	if rep.WebSocket != nil {
		if p := firstProtocol(rep.WebSocket.SecWebSocketProtocol); p != "" {
			opts.Subprotocols = []string{p}
		}
	}
	// net/http clears the listener's read and write deadlines on hijack:
	// the WebSocket lives on, bounded by the idle timeout and pings.
	ws, err := websocket.Accept(smallBuffers{w, c}, r, opts)
	if err != nil {
		// Accept answered the client. The register function did accept,
		// so the connection may be recorded somewhere: clean it up.
		log.Warn("upgrade failed after register accepted", "err", err)
		g.m.connects.WithLabelValues(connectError).Inc()
		g.remove(c)
		c.settle(nil)
		if !g.cleanup(id) {
			g.forgetFailed(id)
		}
		return
	}
	if resume == "1" {
		c.sess = g.newSession(id)
		g.start(c)
	}
	g.m.connects.WithLabelValues(connectAccepted).Inc()
	handedOff = true // released by finish
	c.open(ws)
	log.Debug("connection open", "protocol", ws.Subprotocol(), "source_ip", ev.RequestContext.SourceIP, "session", c.sess != nil)
}

// open serves c, upgraded to ws: its reader starts and pushes reach it.
func (c *conn) open(ws *websocket.Conn) {
	g := c.g
	ws.SetReadLimit(g.opts.MaxMessageSize)
	c.touch()
	c.pinged.Store(c.last.Load())
	g.stats.total.Add(1)
	g.stats.open.Add(1)
	c.settle(ws)
	if g.isClosed() {
		// Close may have missed it while it was being upgraded.
		c.close(statusGoingAway, "gateway shutting down", discShutdown)
		c.finish()
		return
	}
	c.kick() // a session's welcome, and what it kept for the client
	g.startJanitor()
	g.wheel.add(c)
	// The connection is read by a goroutine of its own and the handler
	// returns, so net/http lets go of the request, its response buffers
	// and the handler's grown stack: an idle connection costs only what
	// it needs (see smallBuffers).
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		c.serve()
	}()
}

// acceptOptions are the upgrade's options for c.
func (c *conn) acceptOptions() *websocket.AcceptOptions {
	g := c.g
	return &websocket.AcceptOptions{
		// Tencent's gateway does not check Origin; deciding who may
		// connect is the register function's job.
		// The Origin list, when set, was checked above.
		InsecureSkipVerify: true,
		OnPingReceived:     func(context.Context, []byte) bool { c.touch(); return true },
		OnPongReceived:     func(context.Context, []byte) { c.ponged.Store(g.since()) },
	}
}

// Buffer sizes of an accepted WebSocket. net/http's are 4 KiB each; frames
// larger than a buffer are read and written past it, directly.
const (
	connReadBuffer  = 512
	connWriteBuffer = 512
)

// smallBuffers hands coder/websocket a hijacked connection with a write
// buffer of connWriteBuffer bytes and reads of connReadBuffer bytes into a
// buffer held only while they wait (finConn), instead of net/http's 4 KiB
// each (what a connection holds while idle is mostly its buffers).
type smallBuffers struct {
	http.ResponseWriter
	c *conn // given the socket and its reader
}

// Hijack implements http.Hijacker.
func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	nc := newFinConn(hc)
	if err := brw.Writer.Flush(); err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	r := brw.Reader
	if r.Buffered() == 0 {
		// Nothing read ahead (the client waits for the 101): a fresh,
		// small reader loses nothing. finConn holds the read buffer
		// only while bytes wait in it (idleread.go).
		r = bufio.NewReaderSize(nc, idleReadBuffer)
		// Only this reader never reads ahead (see finConn): the
		// connection may wait for frames on the socket.
		w.c.fc = nc
	}
	return nc, bufio.NewReadWriter(r, bufio.NewWriterSize(nc, connWriteBuffer)), nil
}

// Unwrap gives http.ResponseController the wrapped writer.
func (w smallBuffers) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// errCutOff is the end of a client's byte stream (TCP FIN), as a WebSocket
// reads it. coder/websocket takes an io.EOF from the socket in the middle
// of a message for the end of the message (v1.8.15 passes it through Read),
// so a message cut off by a FIN (a frame shorter than its header says, a
// first fragment without the rest) would be forwarded as complete. Any
// other error fails the read of the message instead.
var errCutOff = errors.New("the client ended the TCP connection without a close frame")

// serve reads frames in order and hands each to the transfer function
// before reading the next, as the gateway does; it returns when the
// connection ends, for whatever reason, and then cleans up once.
//
// Between messages it waits in awaitFrame, a few calls deep: while it
// waits there, the garbage collector halves its 4 KiB stack (what reading a
// message through coder/websocket grows it to), which is most of an idle
// connection's cost after its buffers.
func (c *conn) serve() {
	defer c.finish()
	for {
		c.awaitFrame()
		if !c.readMessage() {
			return
		}
	}
}

// awaitFrame waits until the client's next frame arrives, and takes whole
// pong frames off the socket itself (recording the pong, as coder/websocket
// would). It returns at once when bytes are already read (finConn), on TLS
// (whose reads go through crypto/tls), or on any error or frame it does not
// take: coder/websocket then reads as usual.
func (c *conn) awaitFrame() {
	if c.fc == nil {
		return
	}
	for c.fc.takePong() {
		c.ponged.Store(c.g.since())
	}
}

// readMessage reads one client message and hands it to the transfer
// function; false: the connection is over.
func (c *conn) readMessage() bool {
	g := c.g
	typ, r, err := c.ws.Reader(context.Background())
	if err != nil {
		c.noteClientClose(err)
		g.log.Debug("connection ended", "conn", c.id, "status", int(websocket.CloseStatus(err)), "err", err)
		return false
	}
	// A message is forwarded only once its last frame arrived: one the
	// connection ended in the middle of, or one past the size limit
	// (closed with 1009), goes nowhere.
	data, err := io.ReadAll(r)
	if err != nil {
		c.readFailed(len(data), err)
		return false
	}
	if which := c.admit(len(data)); which != "" {
		c.overLimit(which, len(data))
		return false
	}
	if typ == websocket.MessageText && !utf8.Valid(data) {
		// RFC 6455 §8.1: fail the connection. Forwarded, the bytes
		// would reach the backend as U+FFFD, not as the client sent them.
		g.log.Info("closing client: text message is not valid UTF-8", "conn", c.id, "bytes", len(data))
		c.close(websocket.StatusInvalidFramePayloadData, "text message is not valid UTF-8", discInvalid)
		return false
	}
	if c.sess != nil {
		if len(data) > 0 && data[0] == prefixControl {
			if !c.controlIn(data[1:]) {
				c.close(websocket.StatusProtocolError, "malformed control message", discInvalid)
				return false
			}
			return true
		}
		if len(data) == 0 || data[0] != prefixData {
			g.log.Info("closing client: message without its session-mode prefix", "conn", c.id, "bytes", len(data))
			c.close(websocket.StatusProtocolError, "session mode: every message starts with d or c", discInvalid)
			return false
		}
		data = data[1:]
	}
	c.touch()
	g.stats.framesIn.Add(1)
	g.m.framesIn.Inc()
	var ev dataEvent
	if typ == websocket.MessageBinary {
		ev = newDataEvent(c.id, subjects.DataBinary, base64.StdEncoding.EncodeToString(data))
	} else {
		ev = newDataEvent(c.id, subjects.DataText, string(data))
	}
	_, err = g.invoke(context.Background(), "transfer", g.opts.Transfer, ev)
	g.writes.observe(writeEvents, g.since(), err)
	if err != nil {
		g.log.Warn("closing client: transfer failed", "conn", c.id, "err", err)
		c.close(statusInternal, "transfer function failed", discError)
		return false
	}
	if c.sess != nil {
		c.passedOn()
	}
	return true
}

// noteClientClose records a close frame the client sent first: its session
// ends rather than waiting for it to come back.
func (c *conn) noteClientClose(err error) {
	if websocket.CloseStatus(err) != -1 && !c.closing.Load() {
		c.clientClosed.Store(true)
	}
}

// readFailed logs and counts a client message that could not be read
// whole, after n bytes of it.
func (c *conn) readFailed(n int, err error) {
	var why string
	switch {
	case errors.Is(err, errCutOff) && c.sess != nil:
		// The network dropped it mid-message: the client sends the
		// message again when it resumes.
		c.g.log.Debug("session socket ended in a message", "conn", c.id, "read_bytes", n)
		return
	case errors.Is(err, errCutOff):
		why = "message cut off by the end of the connection"
	case errors.Is(err, websocket.ErrMessageTooBig):
		why = "message larger than the limit"
	default:
		c.noteClientClose(err)
		c.g.log.Debug("connection ended in a message", "conn", c.id, "status", int(websocket.CloseStatus(err)), "err", err)
		return
	}
	c.g.log.Info("client message not forwarded: "+why, "conn", c.id, "read_bytes", n, "max_message_size", c.g.opts.MaxMessageSize)
	if c.closing.CompareAndSwap(false, true) {
		c.why.Store(reasonIndex(discInvalid))
	}
}

// finish runs once per accepted connection, from its reader goroutine. A
// connection ended by this edge instance's shutdown is announced with reason
// shutdown instead of invoking cleanup (which would announce it as the
// client's doing), one found swept as lost: one disconnect event per
// connection. An edge instance whose cleanup NATS failed retries the end
// until NATS takes it.
func (c *conn) finish() {
	g := c.g
	ended := time.Now()
	defer g.slots.Add(-1)
	if c.sess != nil && c.sess.detach(c, disconnectReasons[c.why.Load()]) {
		// Suspended: the connection lives on without a socket.
		g.remove(c)
		g.wheel.remove(c)
		_ = c.ws.CloseNow()
		g.stats.open.Add(-1)
		g.releaseIP(c.ip)
		return
	}
	g.remove(c)
	g.wheel.remove(c)
	c.qmu.Lock()
	dropped := c.end(nil) // what is queued has no connection to go to
	c.qmu.Unlock()
	_ = c.ws.CloseNow()
	g.stats.open.Add(-1)
	g.releaseIP(c.ip)
	why := disconnectReasons[c.why.Load()]
	announce := c.announce.Load()
	if announce != nil && g.edge != nil {
		why = *announce
	}
	dropWhy := dropEnded
	if why == discSlow {
		dropWhy = dropSlow
	}
	c.drop(dropped, dropWhy, "the connection ended ("+why+") before the frame was written")
	if announce != nil && g.edge != nil {
		g.edge.announce(c.id, *announce)
		g.stats.cleanups.Add(1)
	} else {
		g.ended(c.id, why, ended)
	}
	g.m.disconnects.WithLabelValues(why).Inc()
}

// cleanup invokes the cleanup function for id and reports whether it
// succeeded.
func (g *Gateway) cleanup(id string) bool {
	// Counted once the invocation has returned, so a reader of Stats that
	// sees the cleanup also sees its invocation counted.
	defer g.stats.cleanups.Add(1)
	_, err := g.invoke(context.Background(), "cleanup", g.opts.Cleanup, newClosingEvent(id))
	g.writes.observe(writeEvents, g.since(), err)
	if err != nil {
		if g.edge != nil {
			g.log.Warn("cleanup failed; retrying the end until NATS takes it", "conn", id, "err", err)
		} else {
			g.log.Warn("cleanup failed", "conn", id, "err", err)
		}
		return false
	}
	return true
}

// startJanitor starts the idle reaper with the first connection, so a
// gateway that never serves one runs no goroutine.
func (g *Gateway) startJanitor() {
	g.janitorOnce.Do(func() { go g.wheel.run() })
}
