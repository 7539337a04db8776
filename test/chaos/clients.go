package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// clientRecvBuf is the receive buffer of every client socket: small and
// fixed (no autotuning), so that a client that stops reading fills it, and
// the edge's send buffer, with a burst of a few megabytes.
const clientRecvBuf = 64 << 10

// causeWindow is how long before a connection's observed end a cause may
// be and still count as what ended it; an older one (a stall the
// connection lived through) did not.
const causeWindow = 20 * time.Second

// client is one simulated WebSocket client. It keeps one connection open
// to an edge, reconnecting (to the other edge first) whenever it ends,
// until the run stops it. Each connection is a life; its protocol,
// "chaos.c<client>.<life>", tells the auth responder who it is.
type client struct {
	r    *Runner
	idx  int
	plan ClientPlan

	mu        sync.Mutex
	life      int
	cur       *wsConn
	lastToken string
	pauseTill time.Time
	stallGate chan struct{} // non-nil while the client does not read
	stopped   bool
	conns     []*wsConn
}

// wsConn is one connection of a client.
type wsConn struct {
	cl *client
	ws *websocket.Conn

	mu       sync.Mutex
	rec      ConnRec
	ended    bool
	causes   []Cause
	recorded bool
}

var dialTransport = &http.Transport{
	DialContext: (&net.Dialer{
		Timeout: 5 * time.Second,
		Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, clientRecvBuf)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}).DialContext,
	MaxIdleConnsPerHost: -1, // every upgrade takes its own connection
}

func (c *client) run(ctx context.Context) {
	edge := c.idx % len(c.r.edges)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		c.mu.Lock()
		wait := time.Until(c.pauseTill)
		c.mu.Unlock()
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		c.mu.Lock()
		if c.stopped {
			c.mu.Unlock()
			return
		}
		c.life++
		life := c.life
		c.mu.Unlock()
		key := fmt.Sprintf("c%d.%d", c.idx, life)
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ws, _, err := websocket.Dial(dctx, c.r.edges[edge].wsURL, &websocket.DialOptions{
			Subprotocols: []string{"chaos." + key},
			HTTPClient:   &http.Client{Transport: dialTransport},
		})
		cancel()
		if err != nil {
			c.r.dialFailures.Add(1)
			edge = (edge + 1) % len(c.r.edges)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff + rand.N(backoff)):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		ws.SetReadLimit(1 << 20)
		token := c.r.auth.token(key)
		if token == "" {
			// The auth responder answered this life, or the dial could
			// not have succeeded with required authorization.
			c.r.logf("client %d: connection %s open but the auth responder never saw it", c.idx, key)
			_ = ws.CloseNow()
			continue
		}
		conn := &wsConn{cl: c, ws: ws, rec: ConnRec{T: "conn", Client: c.idx, Life: life, Token: token, Edge: edge, Open: time.Now()}}
		if kind := c.r.edges[edge].goingKind(); kind != "" {
			conn.addCause(kind) // opened as its edge is being stopped
		}
		c.mu.Lock()
		c.cur, c.lastToken = conn, token
		c.conns = append(c.conns, conn)
		stopped := c.stopped
		c.mu.Unlock()
		if stopped {
			_ = ws.CloseNow()
			return
		}
		status, rerr := conn.read(c)
		conn.finish(status, rerr)
		c.r.connEnded(conn)
		c.mu.Lock()
		if c.cur == conn {
			c.cur = nil
		}
		c.mu.Unlock()
		// An edge that failed is likely still down: go to the next one.
		if !conn.hasCause(ActionClientClose) && !conn.hasCause(ActionBackendClose) {
			edge = (edge + 1) % len(c.r.edges)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50*time.Millisecond + rand.N(200*time.Millisecond)):
		}
	}
}

// read receives frames until the connection ends, holding off while the
// client stalls.
func (w *wsConn) read(c *client) (websocket.StatusCode, error) {
	for {
		c.mu.Lock()
		gate := c.stallGate
		c.mu.Unlock()
		if gate != nil {
			<-gate
		}
		_, data, err := w.ws.Read(context.Background())
		if err != nil {
			return websocket.CloseStatus(err), err
		}
		id, _, _ := strings.Cut(string(data[:min(len(data), 64)]), " ")
		w.mu.Lock()
		if validID(id) {
			w.rec.Frames = append(w.rec.Frames, id)
			w.rec.FrameAt = append(w.rec.FrameAt, time.Since(w.rec.Open).Milliseconds())
		} else {
			w.rec.Bad = append(w.rec.Bad, id)
		}
		w.mu.Unlock()
	}
}

func validID(id string) bool {
	if len(id) < 2 || (id[0] != 'm' && id[0] != 'b') {
		return false
	}
	for _, ch := range id[1:] {
		if (ch < '0' || ch > '9') && ch != '.' {
			return false
		}
	}
	return true
}

// finish records the connection's end: the earliest cause within
// causeWindow of it, or now.
func (w *wsConn) finish(status websocket.StatusCode, err error) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	w.rec.Ended, w.rec.End = true, now
	if status >= 0 {
		w.rec.CloseStatus = int(status)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		w.rec.EndErr = err.Error()
	}
	for _, cs := range w.causes {
		if now.Sub(cs.At) > causeWindow {
			continue
		}
		w.rec.Causes = append(w.rec.Causes, cs)
		if cs.At.Before(w.rec.End) {
			w.rec.End = cs.At
		}
	}
}

// addCause notes that the runner is about to do something that may end
// the connection. It returns false for a connection that already ended.
func (w *wsConn) addCause(kind string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return false
	}
	w.causes = append(w.causes, Cause{Kind: kind, At: time.Now()})
	return true
}

func (w *wsConn) hasCause(kind string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, cs := range w.causes {
		if cs.Kind == kind {
			return true
		}
	}
	return false
}

// snapshot is the connection's record as of now (a live one is recorded
// with Ended false).
func (w *wsConn) snapshot() ConnRec {
	w.mu.Lock()
	defer w.mu.Unlock()
	rec := w.rec
	rec.Frames = append([]string(nil), w.rec.Frames...)
	rec.FrameAt = append([]int64(nil), w.rec.FrameAt...)
	rec.Bad = append([]string(nil), w.rec.Bad...)
	rec.Causes = append([]Cause(nil), w.rec.Causes...)
	if rec.Frames == nil {
		rec.Frames = []string{}
	}
	return rec
}

func (w *wsConn) isEnded() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ended
}

// current returns the client's open connection, or nil.
func (c *client) current() *wsConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// target is the token a send to this client goes to: the current
// connection's, or the last one's when it has none (the send is then
// dead-lettered, which the checker verifies), or "" before any.
func (c *client) target() (string, *wsConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastToken, c.cur
}

// closeNow is a client action: close (1000) and stay away for pause.
func (c *client) closeNow(pause time.Duration) (string, bool) {
	c.mu.Lock()
	conn := c.cur
	c.pauseTill = time.Now().Add(pause)
	c.mu.Unlock()
	if conn == nil || !conn.addCause(ActionClientClose) {
		return "", false
	}
	go func() { _ = conn.ws.Close(websocket.StatusNormalClosure, "chaos client leaving") }()
	return conn.rec.Token, true
}

// stall stops the client's reading until resume.
func (c *client) stall() *wsConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stallGate != nil || c.cur == nil {
		return nil
	}
	if !c.cur.addCause(FaultStall) {
		return nil
	}
	c.stallGate = make(chan struct{})
	return c.cur
}

func (c *client) resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stallGate != nil {
		close(c.stallGate)
		c.stallGate = nil
	}
}

// stop closes the client for good, without recording the end (the run's
// history was taken before).
func (c *client) stop() {
	c.mu.Lock()
	c.stopped = true
	conn := c.cur
	if c.stallGate != nil {
		close(c.stallGate)
		c.stallGate = nil
	}
	c.mu.Unlock()
	if conn != nil {
		_ = conn.ws.CloseNow()
	}
}
