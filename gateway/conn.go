package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

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
	last    atomic.Int64 // g.since() of the last frame in either direction
	closing atomic.Bool  // a close handshake was started by the gateway
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
// sees.
func (c *conn) close(code websocket.StatusCode, reason string) {
	if c.closing.CompareAndSwap(false, true) {
		_ = c.ws.Close(code, reason)
	}
}

// write sends one frame; coder/websocket serializes concurrent writers and
// ctx bounds the wait for a slow client (which is then disconnected).
func (c *conn) write(ctx context.Context, typ websocket.MessageType, data []byte) error {
	if err := c.ws.Write(ctx, typ, data); err != nil {
		return err
	}
	c.touch()
	c.g.stats.framesOut.Add(1)
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
		g.stats.rejected.Add(1)
		writeReply(w, http.StatusServiceUnavailable, http.StatusServiceUnavailable, "gateway is shutting down")
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
	if n := g.slots.Add(1); n > int64(g.opts.MaxConnections) {
		g.slots.Add(-1)
		g.stats.rejected.Add(1)
		g.log.Warn("connection rejected: limit reached", "max_connections", g.opts.MaxConnections)
		writeReply(w, http.StatusServiceUnavailable, http.StatusServiceUnavailable, "too many connections")
		return
	}
	defer g.slots.Add(-1)

	id := newConnID()
	log := g.log.With("conn", id)
	// Known to pushes from now on, so a reply to the connect event that
	// overtakes the upgrade waits for it instead of finding nothing.
	c := &conn{g: g, id: id, ready: make(chan struct{})}
	if !g.add(c) {
		g.stats.rejected.Add(1)
		writeReply(w, http.StatusServiceUnavailable, http.StatusServiceUnavailable, "gateway is shutting down")
		return
	}
	refuse := func(status, errNo int, msg string) {
		g.remove(c)
		c.settle(nil)
		g.stats.rejected.Add(1)
		writeReply(w, status, errNo, msg)
	}
	ev := connectingEvent{
		RequestContext: requestContext{
			ServiceID:       g.opts.ServiceID,
			Path:            r.URL.Path,
			HTTPMethod:      http.MethodGet,
			RequestID:       newRequestID(),
			SourceIP:        sourceIP(r),
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
		refuse(http.StatusBadGateway, http.StatusBadGateway, err.Error())
		return
	}
	if rep.ErrNo != 0 {
		log.Info("connection rejected by register function", "errNo", rep.ErrNo, "errMsg", rep.ErrMsg)
		refuse(http.StatusForbidden, rep.ErrNo, rep.ErrMsg)
		return
	}

	opts := &websocket.AcceptOptions{
		// Tencent's gateway does not check Origin; deciding who may
		// connect is the register function's job.
		InsecureSkipVerify: true,
		OnPingReceived:     func(context.Context, []byte) bool { c.touch(); return true },
		OnPongReceived:     func(context.Context, []byte) { c.touch() },
	}
	if rep.WebSocket != nil {
		if p := firstProtocol(rep.WebSocket.SecWebSocketProtocol); p != "" {
			opts.Subprotocols = []string{p}
		}
	}
	ws, err := websocket.Accept(w, r, opts)
	if err != nil {
		// Accept answered the client. The register function did accept,
		// so the connection may be recorded somewhere: clean it up.
		log.Warn("upgrade failed after register accepted", "err", err)
		g.remove(c)
		c.settle(nil)
		g.cleanup(id)
		return
	}
	ws.SetReadLimit(g.opts.MaxMessageSize)
	c.touch()
	g.stats.total.Add(1)
	g.stats.open.Add(1)
	c.settle(ws)
	if g.isClosed() {
		// Close may have missed it while it was being upgraded.
		c.close(statusGoingAway, "gateway shutting down")
		c.finish()
		return
	}
	g.startJanitor()
	log.Debug("connection open", "protocol", ws.Subprotocol(), "source_ip", ev.RequestContext.SourceIP)
	c.serve()
}

// serve reads frames in order and hands each to the transfer function
// before reading the next, as the gateway does; it returns when the
// connection ends, for whatever reason, and then cleans up once.
func (c *conn) serve() {
	defer c.finish()
	g := c.g
	for {
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			g.log.Debug("connection ended", "conn", c.id, "status", int(websocket.CloseStatus(err)), "err", err)
			return
		}
		c.touch()
		g.stats.framesIn.Add(1)
		var ev dataEvent
		if typ == websocket.MessageBinary {
			ev = newDataEvent(c.id, subjects.DataBinary, base64.StdEncoding.EncodeToString(data))
		} else {
			ev = newDataEvent(c.id, subjects.DataText, string(data))
		}
		if _, err := g.invoke(context.Background(), "transfer", g.opts.Transfer, ev); err != nil {
			g.log.Warn("closing client: transfer failed", "conn", c.id, "err", err)
			c.close(statusInternal, "transfer function failed")
			return
		}
	}
}

// finish runs once per accepted connection, from its reader goroutine.
func (c *conn) finish() {
	c.g.remove(c)
	_ = c.ws.CloseNow()
	c.g.stats.open.Add(-1)
	c.g.cleanup(c.id)
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
	every := min(max(g.opts.IdleTimeout/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
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
			go c.close(statusGoingAway, "idle timeout")
		}
		clear(stale)
	}
}
