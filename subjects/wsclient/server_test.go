package wsclient_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// fakeGateway is the server side of the session protocol, as little of it
// as the tests need: new sessions, resume from a buffer of what the client
// has not acknowledged, reset on an unknown key, acks after each client
// message, and an echo ("echo: " + payload) of every one. Without resume in
// the query it is a plain echo server. Tests drive it with push, end,
// reset, forget, cut and stall.
type fakeGateway struct {
	srv *httptest.Server

	mu        sync.Mutex
	sessions  map[string]*fakeSession // by key
	byID      map[string]*fakeSession
	n         int
	queries   []url.Values // of every upgrade
	offered   []string     // the Sec-WebSocket-Protocol of every upgrade
	protos    []string     // subprotocols to choose from
	refuse    []int        // statuses to answer the next upgrades with
	conns     map[*websocket.Conn]bool
	noEcho    bool
	noWelcome bool // send a plain message first instead of a welcome
	off       bool // refuse new sessions with reset "off", as with --resume-window 0
	amnesia   bool // answer a resume with a new session instead of a reset
}

// fakeSession is one session; its mu also orders the writes to its socket,
// so that numbering and writing cannot interleave.
type fakeSession struct {
	key, id, token string

	mu     sync.Mutex
	conn   *websocket.Conn // nil while suspended
	in     uint64          // client data messages passed on
	passed []string        // those messages, in order
	sent   uint64          // pushes numbered
	buf    []string        // pushes acknowledgement-pending: numbers acked+1..sent
	acked  uint64          // the client's last ack (or received=)
	acks   []uint64        // every ack the client sent
	stall  bool            // discard client data, as if lost on the way, until the next socket
	silent bool            // pass client data on without acking it
	ended  websocket.StatusCode
}

func newFakeGateway(t testing.TB) *fakeGateway {
	g := startFakeGateway()
	t.Cleanup(g.Close)
	return g
}

// startFakeGateway starts one; Close stops it.
func startFakeGateway() *fakeGateway {
	g := &fakeGateway{
		sessions: map[string]*fakeSession{},
		byID:     map[string]*fakeSession{},
		conns:    map[*websocket.Conn]bool{},
	}
	g.srv = httptest.NewServer(http.HandlerFunc(g.handle))
	return g
}

// URL is the gateway's WebSocket URL, /ws, with query q (may be "").
func (g *fakeGateway) URL(q string) string {
	u := "ws" + strings.TrimPrefix(g.srv.URL, "http") + "/ws"
	if q != "" {
		u += "?" + q
	}
	return u
}

// Close cuts every socket, so that the handlers return, then stops.
func (g *fakeGateway) Close() {
	g.mu.Lock()
	for c := range g.conns {
		_ = c.CloseNow()
	}
	g.mu.Unlock()
	g.srv.Close()
}

func (g *fakeGateway) upgrades() []url.Values {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]url.Values(nil), g.queries...)
}

func (g *fakeGateway) session(id string) *fakeSession {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.byID[id]
}

func (g *fakeGateway) handle(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	g.mu.Lock()
	g.queries = append(g.queries, q)
	g.offered = append(g.offered, r.Header.Get("Sec-WebSocket-Protocol"))
	protos := g.protos
	if len(g.refuse) > 0 {
		status := g.refuse[0]
		g.refuse = g.refuse[1:]
		g.mu.Unlock()
		http.Error(w, "refused", status)
		return
	}
	g.mu.Unlock()
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: protos})
	if err != nil {
		return
	}
	g.mu.Lock()
	g.conns[conn] = true
	noWelcome := g.noWelcome
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.conns, conn)
		g.mu.Unlock()
		_ = conn.CloseNow()
	}()
	if noWelcome {
		_ = write(conn, websocket.MessageText, "hello")
	}
	resume := q.Get("resume")
	g.mu.Lock()
	off, amnesia := g.off, g.amnesia
	g.mu.Unlock()
	if off && resume != "" {
		_ = write(conn, websocket.MessageText, `c{"t":"reset","reason":"off"}`)
		_ = conn.Close(4001, "session off")
		return
	}
	if amnesia && resume != "" {
		resume = "1"
	}
	switch resume {
	case "":
		g.plain(conn)
		return
	case "1":
		g.mu.Lock()
		g.n++
		s := &fakeSession{
			// A key that needs escaping in a query.
			key:   fmt.Sprintf("inst~k+%d/=&", g.n),
			id:    fmt.Sprintf("inst~id%d", g.n),
			token: fmt.Sprintf("tok%d", g.n),
		}
		g.sessions[s.key] = s
		g.byID[s.id] = s
		g.mu.Unlock()
		g.serve(conn, s, false, 0)
	default:
		n, err := strconv.ParseUint(q.Get("received"), 10, 64)
		g.mu.Lock()
		s := g.sessions[resume]
		g.mu.Unlock()
		ok := err == nil && s != nil
		if ok {
			s.mu.Lock()
			ok = s.ended == 0 && n >= s.acked && n <= s.sent
			s.mu.Unlock()
		}
		if !ok {
			_ = write(conn, websocket.MessageText, `c{"t":"reset","reason":"unknown"}`)
			_ = conn.Close(4001, "unknown")
			return
		}
		g.serve(conn, s, true, n)
	}
}

func (g *fakeGateway) plain(conn *websocket.Conn) {
	for {
		typ, b, err := conn.Read(context.Background())
		if err != nil {
			return
		}
		if err := conn.Write(context.Background(), typ, append([]byte("echo: "), b...)); err != nil {
			return
		}
	}
}

// serve runs one socket of session s; received is what the client said it
// had on a resume.
func (g *fakeGateway) serve(conn *websocket.Conn, s *fakeSession, resumed bool, received uint64) {
	s.mu.Lock()
	if s.conn != nil {
		_ = s.conn.CloseNow() // the client's old socket, not noticed gone yet
	}
	s.conn = conn
	s.stall = false // what was lost was lost on the old socket
	s.dropLocked(received)
	welcome, _ := json.Marshal(map[string]any{
		"t": "welcome", "key": s.key, "id": s.id, "token": s.token,
		"resumed": resumed, "in": s.in, "window": 30,
	})
	_ = write(conn, websocket.MessageText, "c"+string(welcome))
	for _, m := range s.buf {
		_ = write(conn, websocket.MessageText, "d"+m)
	}
	s.mu.Unlock()

	for {
		_, b, err := conn.Read(context.Background())
		if err != nil {
			s.mu.Lock()
			if s.conn == conn {
				s.conn = nil
				if code := websocket.CloseStatus(err); code != -1 {
					s.ended = code // a close frame from the client ends it
				}
			}
			s.mu.Unlock()
			return
		}
		if len(b) == 0 {
			continue
		}
		switch b[0] {
		case 'd':
			s.mu.Lock()
			if s.stall || s.conn != conn {
				s.mu.Unlock()
				continue
			}
			s.in++
			s.passed = append(s.passed, string(b[1:]))
			if !s.silent {
				_ = write(conn, websocket.MessageText, fmt.Sprintf(`c{"t":"ack","in":%d}`, s.in))
			}
			g.mu.Lock()
			echo := !g.noEcho
			g.mu.Unlock()
			if echo {
				s.pushLocked("echo: " + string(b[1:]))
			}
			s.mu.Unlock()
		case 'c':
			var m struct {
				T        string `json:"t"`
				Received uint64 `json:"received"`
			}
			if err := json.Unmarshal(b[1:], &m); err != nil || m.T != "ack" {
				_ = conn.Close(websocket.StatusProtocolError, "bad control")
				return
			}
			s.mu.Lock()
			s.acks = append(s.acks, m.Received)
			s.dropLocked(m.Received)
			s.mu.Unlock()
		}
	}
}

// dropLocked forgets the pushes the client has received.
func (s *fakeSession) dropLocked(received uint64) {
	if received <= s.acked {
		return
	}
	n := min(received-s.acked, uint64(len(s.buf)))
	s.buf = s.buf[n:]
	s.acked = received
}

// pushLocked numbers a push, keeps it until acknowledged and writes it if
// the session has a socket (a failed write is what a drop does: the buffer
// keeps the message for the resume).
func (s *fakeSession) pushLocked(m string) {
	s.sent++
	s.buf = append(s.buf, m)
	if s.conn != nil {
		_ = write(s.conn, websocket.MessageText, "d"+m)
	}
}

// push sends data messages to session id.
func (g *fakeGateway) push(t testing.TB, id string, msgs ...string) {
	t.Helper()
	s := g.session(id)
	if s == nil {
		t.Fatalf("push: no session %q", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		s.pushLocked(m)
	}
}

// end closes session id's socket with code: 1001 (a shutdown) and 1013 (a
// resume to try again) suspend the session, any other ends it (a close
// push, a policy close).
func (g *fakeGateway) end(t testing.TB, id string, code websocket.StatusCode, reason string) {
	t.Helper()
	s := g.session(id)
	s.mu.Lock()
	conn := s.conn
	s.conn = nil
	if code != websocket.StatusGoingAway && code != websocket.StatusTryAgainLater {
		s.ended = code
	}
	s.mu.Unlock()
	if conn == nil {
		t.Fatalf("end: session %q has no socket", id)
	}
	_ = conn.Close(code, reason)
}

// reset refuses session id on its live socket (reset, then 4001).
func (g *fakeGateway) reset(t testing.TB, id, reason string) {
	t.Helper()
	s := g.session(id)
	s.mu.Lock()
	conn := s.conn
	s.conn = nil
	s.ended = 4001
	if conn != nil {
		_ = write(conn, websocket.MessageText, `c{"t":"reset","reason":"`+reason+`"}`)
	}
	s.mu.Unlock()
	if conn == nil {
		t.Fatalf("reset: session %q has no socket", id)
	}
	_ = conn.Close(4001, reason)
}

// forget drops session id, as an expired window does: a resume gets reset
// "unknown".
func (g *fakeGateway) forget(id string) {
	g.mu.Lock()
	s := g.byID[id]
	delete(g.sessions, s.key)
	g.mu.Unlock()
}

// raw writes m to session id's socket as it is, prefix or not.
func (g *fakeGateway) raw(t testing.TB, id, m string) {
	t.Helper()
	s := g.session(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		t.Fatalf("raw: session %q has no socket", id)
	}
	_ = write(s.conn, websocket.MessageText, m)
}

// cut ends session id's socket without a close frame, from the server.
func (g *fakeGateway) cut(id string) {
	s := g.session(id)
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		_ = conn.CloseNow()
	}
}

// stall makes session id discard the client's data messages until its
// next socket, as if lost on the way. Losing some and passing on later ones
// on one socket cannot happen: so the next socket ends it, not the test.
func (g *fakeGateway) stall(id string) {
	s := g.session(id)
	s.mu.Lock()
	s.stall = true
	s.mu.Unlock()
}

// setSilent makes session id pass the client's data messages on without
// acking them, as if its acks were lost on the way.
func (g *fakeGateway) setSilent(id string, silent bool) {
	s := g.session(id)
	s.mu.Lock()
	s.silent = silent
	s.mu.Unlock()
}

// snapshot returns what session id passed on and the client's acks.
func (g *fakeGateway) snapshot(id string) (passed []string, acks []uint64, ended websocket.StatusCode) {
	s := g.session(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.passed...), append([]uint64(nil), s.acks...), s.ended
}

func write(conn *websocket.Conn, typ websocket.MessageType, m string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return conn.Write(ctx, typ, []byte(m))
}

// newOffGateway is a gateway with sessions turned off that answers a new
// session with a reset "off" (and 4001). It returns its WebSocket URL.
func newOffGateway(t testing.TB) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		_ = write(conn, websocket.MessageText, `c{"t":"reset","reason":"off"}`)
		_ = conn.Close(4001, "off")
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
}
