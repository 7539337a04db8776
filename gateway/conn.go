package gateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
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
// sized for 10,000 connections, so there is no per-connection writer
// goroutine, queue or timer. The handler goroutine that accepted the
// connection reads it; pushes write from their own request goroutines and
// coder/websocket serializes the frames; one janitor goroutine per gateway
// enforces the idle timeout.
type conn struct {
	g  *Gateway
	id string
	// ready is closed once the upgrade is decided; ws is set before that
	// when it succeeded and must not be read before ready is closed.
	ready   chan struct{}
	ws      *websocket.Conn
	ip      string       // client IP, for the per-IP count
	last    atomic.Int64 // g.since() of the last data frame either way, or client ping
	pinged  atomic.Int64 // g.since() of the last ping the gateway sent
	closing atomic.Bool  // a close handshake was started by the gateway
	why     atomic.Int32 // index in disconnectReasons of why it ended; 0 = client
	// announce, when set, is the disconnect reason this edge instance
	// announces the connection with instead of invoking cleanup:
	// shutdown, or lost when its registry record was swept while this
	// instance was cut off from NATS.
	announce atomic.Pointer[string]

	// order admits one push at a time to the connection, so checking a
	// push's Ws-Seq against lastSeq, writing it and raising lastSeq are
	// one step: two bridges pushing the same command at once (one of them
	// a zombie) write it once, and an older command is never written after
	// a newer one. A channel, so a waiting push gives up with its context.
	order   chan struct{}
	lastSeq uint64 // highest Ws-Seq written or closed at; guarded by order
	seqSeen bool   // lastSeq holds one; guarded by order
}

var (
	announceShutdown = subjects.ReasonShutdown
	announceLost     = subjects.ReasonLost
)

// disconnectReasons are the values of conn.why.
var disconnectReasons = [...]string{discClient, discClosed, discIdle, discPing, discError, discShutdown, discInvalid}

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

// admit takes the connection's push order, at most until ctx ends, and
// reports whether s is new: absent, or above every sequence written so far.
// The caller releases the order with done, after its write.
func (c *conn) admit(ctx context.Context, s seq) (fresh bool, err error) {
	select {
	case c.order <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return !s.set || !c.seqSeen || s.n > c.lastSeq, nil
}

// done records s as written, when it was, and releases the push order.
func (c *conn) done(s seq, written bool) {
	if s.set && written {
		c.lastSeq, c.seqSeen = s.n, true
	}
	<-c.order
}

// write sends one frame; coder/websocket serializes concurrent writers and
// ctx bounds the wait for a slow client (which is then disconnected).
func (c *conn) write(ctx context.Context, typ websocket.MessageType, data []byte) error {
	if err := c.ws.Write(ctx, typ, data); err != nil {
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

	id := g.newConnID()
	log := g.log.With("conn", id)
	// Known to pushes from now on, so a reply to the connect event that
	// overtakes the upgrade waits for it instead of finding nothing.
	c := &conn{g: g, id: id, ip: ip, ready: make(chan struct{}), order: make(chan struct{}, 1)}
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
		log.Warn("connection rejected: register failed", "err", err)
		refuse(http.StatusBadGateway, http.StatusBadGateway, err.Error(), connectError)
		g.forgetFailed(id)
		return
	}
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

	opts := &websocket.AcceptOptions{
		// Tencent's gateway does not check Origin; deciding who may
		// connect is the register function's job.
		// The Origin list, when set, was checked above.
		InsecureSkipVerify: true,
		OnPingReceived:     func(context.Context, []byte) bool { c.touch(); return true },
	}
	if rep.WebSocket != nil {
		if p := firstProtocol(rep.WebSocket.SecWebSocketProtocol); p != "" {
			opts.Subprotocols = []string{p}
		}
	}
	// net/http clears the listener's read and write deadlines on hijack:
	// the WebSocket lives on, bounded by the idle timeout and pings.
	ws, err := websocket.Accept(smallBuffers{w}, r, opts)
	if err != nil {
		// Accept answered the client. The register function did accept,
		// so the connection may be recorded somewhere: clean it up.
		log.Warn("upgrade failed after register accepted", "err", err)
		g.m.connects.WithLabelValues(connectError).Inc()
		g.remove(c)
		c.settle(nil)
		g.cleanup(id)
		return
	}
	ws.SetReadLimit(g.opts.MaxMessageSize)
	c.touch()
	c.pinged.Store(c.last.Load())
	g.stats.total.Add(1)
	g.stats.open.Add(1)
	g.m.connects.WithLabelValues(connectAccepted).Inc()
	handedOff = true // released by finish
	c.settle(ws)
	if g.isClosed() {
		// Close may have missed it while it was being upgraded.
		c.close(statusGoingAway, "gateway shutting down", discShutdown)
		c.finish()
		return
	}
	g.startJanitor()
	log.Debug("connection open", "protocol", ws.Subprotocol(), "source_ip", ev.RequestContext.SourceIP)
	// The connection is read by a goroutine of its own and this handler
	// returns, so net/http lets go of the request, its response buffers
	// and the handler's grown stack: an idle connection costs only what
	// it needs (see smallBuffers).
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		c.serve()
	}()
}

// Buffer sizes of an accepted WebSocket. net/http's are 4 KiB each; frames
// larger than a buffer are read and written past it, directly.
const (
	connReadBuffer  = 512
	connWriteBuffer = 512
)

// smallBuffers hands coder/websocket a hijacked connection with buffers of
// connReadBuffer and connWriteBuffer bytes instead of net/http's (what a
// connection holds while idle is mostly its buffers).
type smallBuffers struct{ http.ResponseWriter }

// Hijack implements http.Hijacker.
func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	nc := finConn{hc}
	if err := brw.Writer.Flush(); err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	r := brw.Reader
	if r.Buffered() == 0 {
		// Nothing read ahead (the client waits for the 101): a fresh,
		// small reader loses nothing.
		r = bufio.NewReaderSize(nc, connReadBuffer)
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

// finConn is an upgraded connection whose reads end with errCutOff
// instead of io.EOF.
type finConn struct{ net.Conn }

func (c finConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		err = errCutOff
	}
	return n, err
}

// serve reads frames in order and hands each to the transfer function
// before reading the next, as the gateway does; it returns when the
// connection ends, for whatever reason, and then cleans up once.
func (c *conn) serve() {
	defer c.finish()
	g := c.g
	for {
		typ, r, err := c.ws.Reader(context.Background())
		if err != nil {
			g.log.Debug("connection ended", "conn", c.id, "status", int(websocket.CloseStatus(err)), "err", err)
			return
		}
		// A message is forwarded only once its last frame arrived: one the
		// connection ended in the middle of, or one past the size limit
		// (closed with 1009), goes nowhere.
		data, err := io.ReadAll(r)
		if err != nil {
			c.readFailed(len(data), err)
			return
		}
		if typ == websocket.MessageText && !utf8.Valid(data) {
			// RFC 6455 §8.1: fail the connection. Forwarded, the bytes
			// would reach the backend as U+FFFD, not as the client sent them.
			g.log.Info("closing client: text message is not valid UTF-8", "conn", c.id, "bytes", len(data))
			c.close(websocket.StatusInvalidFramePayloadData, "text message is not valid UTF-8", discInvalid)
			return
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
		if _, err := g.invoke(context.Background(), "transfer", g.opts.Transfer, ev); err != nil {
			g.log.Warn("closing client: transfer failed", "conn", c.id, "err", err)
			c.close(statusInternal, "transfer function failed", discError)
			return
		}
	}
}

// readFailed logs and counts a client message that could not be read
// whole, after n bytes of it.
func (c *conn) readFailed(n int, err error) {
	var why string
	switch {
	case errors.Is(err, errCutOff):
		why = "message cut off by the end of the connection"
	case errors.Is(err, websocket.ErrMessageTooBig):
		why = "message larger than the limit"
	default:
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
// connection.
func (c *conn) finish() {
	g := c.g
	defer g.slots.Add(-1)
	g.remove(c)
	_ = c.ws.CloseNow()
	g.stats.open.Add(-1)
	g.releaseIP(c.ip)
	why := disconnectReasons[c.why.Load()]
	if reason := c.announce.Load(); reason != nil && g.edge != nil {
		why = *reason
		g.edge.announce(subjects.Token(c.id), *reason)
		g.stats.cleanups.Add(1)
	} else {
		g.cleanup(c.id)
	}
	g.m.disconnects.WithLabelValues(why).Inc()
}

func (g *Gateway) cleanup(id string) {
	// Counted once the invocation has returned, so a reader of Stats that
	// sees the cleanup also sees its invocation counted.
	defer g.stats.cleanups.Add(1)
	if _, err := g.invoke(context.Background(), "cleanup", g.opts.Cleanup, newClosingEvent(id)); err != nil {
		g.log.Warn("cleanup failed", "conn", id, "err", err)
	}
}

// startJanitor starts the idle reaper with the first connection, so a
// gateway that never serves one runs no goroutine.
func (g *Gateway) startJanitor() {
	g.janitorOnce.Do(func() { go g.reapIdle() })
}

// reapIdle closes connections with no frame either way for IdleTimeout.
// One scanning goroutine costs less than a timer per connection; the
// check interval bounds how late a close can be.
func (g *Gateway) reapIdle() {
	idle := int64(g.opts.IdleTimeout)
	t := time.NewTicker(g.tickEvery())
	defer t.Stop()
	var stale []*conn
	for {
		select {
		case <-g.done:
			return
		case <-t.C:
		}
		now := g.since()
		stale = stale[:0]
		g.mu.Lock()
		for _, c := range g.conns {
			if c.isReady() && c.ws != nil && now-c.last.Load() >= idle && !c.closing.Load() {
				stale = append(stale, c)
			}
		}
		g.mu.Unlock()
		for _, c := range stale {
			g.log.Debug("closing idle connection", "conn", c.id)
			go c.close(statusGoingAway, "idle timeout", discIdle)
		}
		clear(stale)
		g.pingQuiet(now)
	}
}
