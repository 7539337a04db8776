package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
)

// sessClient speaks the session protocol by hand, frame by frame, so these
// tests check the gateway's side of it without a client library.
type sessClient struct {
	t        *testing.T
	ws       *websocket.Conn
	welcome  control
	received int // data messages received over the session's life
}

// dialSession opens a session (query "resume=1") or resumes one.
func dialSession(t *testing.T, wsURL, query string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, wsURL+"?"+query, nil)
	if err != nil {
		t.Fatalf("dial %s?%s: %v", wsURL, query, err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func newSessClient(t *testing.T, wsURL string) *sessClient {
	t.Helper()
	sc := &sessClient{t: t, ws: dialSession(t, wsURL, "resume=1")}
	sc.welcome = sc.control()
	if sc.welcome.T != "welcome" || sc.welcome.Resumed == nil || *sc.welcome.Resumed || sc.welcome.Key == "" || sc.welcome.ID == "" {
		t.Fatalf("first message %+v, want a welcome of a new session", sc.welcome)
	}
	if sc.welcome.Token != subjects.Token(sc.welcome.ID) || sc.welcome.Window <= 0 {
		t.Fatalf("welcome %+v: token or window wrong", sc.welcome)
	}
	return sc
}

// control reads the next message and wants it to be a control message.
func (sc *sessClient) control() control {
	sc.t.Helper()
	typ, data := read(sc.t, sc.ws)
	if typ != websocket.MessageText || len(data) == 0 || data[0] != prefixControl {
		sc.t.Fatalf("got %q, want a control message", data)
	}
	var m control
	if err := json.Unmarshal(data[1:], &m); err != nil {
		sc.t.Fatalf("control message %q: %v", data, err)
	}
	return m
}

// data reads data messages, skipping the gateway's acks, until it has one.
func (sc *sessClient) data() string {
	sc.t.Helper()
	for {
		_, b := read(sc.t, sc.ws)
		if len(b) > 0 && b[0] == prefixControl {
			var m control
			if json.Unmarshal(b[1:], &m) != nil || m.T != "ack" {
				sc.t.Fatalf("unexpected control message %q", b)
			}
			continue
		}
		if len(b) == 0 || b[0] != prefixData {
			sc.t.Fatalf("message %q without its prefix", b)
		}
		sc.received++
		return string(b[1:])
	}
}

func (sc *sessClient) send(s string) {
	sc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := sc.ws.Write(ctx, websocket.MessageText, []byte("d"+s)); err != nil {
		sc.t.Fatal(err)
	}
}

func (sc *sessClient) ack() {
	sc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := sc.ws.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `c{"t":"ack","received":%d}`, sc.received)); err != nil {
		sc.t.Fatal(err)
	}
}

// drop cuts the socket without a close frame, as a network drop does.
func (sc *sessClient) drop() { _ = sc.ws.CloseNow() }

// resume reconnects with the session's key and what it received; it
// returns the welcome, or the reset's reason.
func (sc *sessClient) resume(wsURL string, received int) (control, string) {
	sc.t.Helper()
	q := url.Values{"resume": {sc.welcome.Key}, "received": {fmt.Sprint(received)}}
	sc.ws = dialSession(sc.t, wsURL, q.Encode())
	m := sc.control()
	switch m.T {
	case "welcome":
		sc.received = received
		if m.Key != "" {
			sc.welcome.Key = m.Key
		}
		return m, ""
	case "reset":
		if st := closeStatus(sc.t, sc.ws); st != closeReset {
			sc.t.Errorf("reset closed with %d, want %d", st, closeReset)
		}
		return m, m.Reason
	}
	sc.t.Fatalf("first message on resume %+v", m)
	return m, ""
}

func pushText(t *testing.T, e *env, id, s string) {
	t.Helper()
	if st, body := e.push(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, s)); st != http.StatusOK {
		t.Fatalf("push %q: %d %s", s, st, body)
	}
}

// A session outlives a dropped socket: pushes while it is away are kept,
// the client resumes with how much it received and gets the rest, once and
// in order; the backend sees one connect, no disconnect, the same id, and
// the client's messages passed on once (its count in the welcome).
func TestSessionResumesAfterDrop(t *testing.T) {
	e := newEnv(t, nil, nil)
	sc := newSessClient(t, e.wsURL())
	id := sc.welcome.ID
	for i := 1; i <= 3; i++ {
		pushText(t, e, id, fmt.Sprint("m", i))
	}
	for i := 1; i <= 3; i++ {
		if got := sc.data(); got != fmt.Sprint("m", i) {
			t.Fatalf("got %q, want m%d", got, i)
		}
	}
	sc.send("hello")
	waitFor(t, "the client's message passed on", func() bool { return len(e.fn.of(subjects.ActionDataRecv)) == 1 })
	if got := e.fn.of(subjects.ActionDataRecv)[0].ws.Data; got != "hello" {
		t.Fatalf("transfer got %q, want hello (without the prefix)", got)
	}

	sc.drop()
	waitFor(t, "the session suspended", func() bool { return e.g.sessSuspended.Load() == 1 })
	for i := 4; i <= 6; i++ {
		pushText(t, e, id, fmt.Sprint("m", i)) // answered 200: kept for the client
	}
	// The client saw m1 and m2 only (m3 was lost with the socket, say).
	w, reason := sc.resume(e.wsURL(), 2)
	if reason != "" {
		t.Fatalf("resume refused: %s", reason)
	}
	if w.ID != id || !*w.Resumed || *w.In != 1 {
		t.Fatalf("welcome on resume %+v: want the same id, resumed, in=1", w)
	}
	for i := 3; i <= 6; i++ {
		if got := sc.data(); got != fmt.Sprint("m", i) {
			t.Fatalf("after resume got %q, want m%d", got, i)
		}
	}
	pushText(t, e, id, "live")
	if got := sc.data(); got != "live" {
		t.Fatalf("got %q, want the live push", got)
	}
	if n := len(e.fn.of(subjects.ActionConnecting)); n != 1 {
		t.Errorf("register invoked %d times, want 1", n)
	}
	if n := e.fn.cleanups(id); n != 0 {
		t.Errorf("cleanup invoked %d times for a resumed session", n)
	}
	if n := len(e.fn.of(subjects.ActionDataRecv)); n != 1 {
		t.Errorf("transfer invoked %d times, want 1", n)
	}

	// A close frame from the client ends the session as it ends a
	// connection: one cleanup, and no resume.
	_ = sc.ws.Close(websocket.StatusNormalClosure, "bye")
	waitFor(t, "cleanup", func() bool { return e.fn.cleanups(id) == 1 })
	if _, reason := sc.resume(e.wsURL(), sc.received); reason != resetClosed {
		t.Errorf("resume after a close: reason %q, want %q", reason, resetClosed)
	}
}

// A session not resumed within the window ends with one cleanup (the
// disconnect event), and a client that comes back later is told it
// expired.
func TestSessionExpires(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.ResumeWindow = 200 * time.Millisecond })
	sc := newSessClient(t, e.wsURL())
	id := sc.welcome.ID
	sc.drop()
	waitFor(t, "cleanup after the window", func() bool { return e.fn.cleanups(id) == 1 })
	if _, reason := sc.resume(e.wsURL(), 0); reason != resetExpired {
		t.Errorf("late resume: reason %q, want %q", reason, resetExpired)
	}
	if n := e.fn.cleanups(id); n != 1 {
		t.Errorf("cleanup invoked %d times, want 1", n)
	}
}

// A session whose buffer overflows while its client is away ends at once:
// the push that did not fit gets 410, cleanup runs once, and the client is
// told why when it returns. A wrong key or count is refused as unknown.
func TestSessionBufferBound(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.ResumeBuffer = 100 })
	sc := newSessClient(t, e.wsURL())
	id := sc.welcome.ID
	sc.drop()
	waitFor(t, "the session suspended", func() bool { return e.g.sessSuspended.Load() == 1 })
	pushText(t, e, id, strings.Repeat("x", 60))
	if st, body := e.push(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, strings.Repeat("y", 60))); st != http.StatusGone {
		t.Fatalf("push past the buffer: %d %s, want 410", st, body)
	}
	waitFor(t, "cleanup", func() bool { return e.fn.cleanups(id) == 1 })
	if _, reason := sc.resume(e.wsURL(), 0); reason != resetSlow {
		t.Errorf("resume after overflow: reason %q, want %q", reason, resetSlow)
	}

	other := newSessClient(t, e.wsURL())
	other.drop()
	waitFor(t, "the session suspended", func() bool { return e.g.sessSuspended.Load() == 1 })
	good := other.welcome.Key
	other.welcome.Key = good[:len(good)-2] + "xx"
	if _, reason := other.resume(e.wsURL(), 0); reason != resetUnknown {
		t.Errorf("resume with a wrong key: %q, want %q", reason, resetUnknown)
	}
	other.welcome.Key = good
	if _, reason := other.resume(e.wsURL(), 5); reason != resetUnknown {
		t.Errorf("resume claiming more than was sent: %q, want %q", reason, resetUnknown)
	}
	if _, reason := other.resume(e.wsURL(), 0); reason != "" {
		t.Errorf("resume after refused attempts: %q", reason)
	}
}

// With sessions off a client that asks for one is told so before any
// function runs; a plain client is untouched by the protocol.
func TestSessionsOff(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.ResumeWindow = -1 })
	ws := dialSession(t, e.wsURL(), "resume=1")
	sc := &sessClient{t: t, ws: ws}
	if m := sc.control(); m.T != "reset" || m.Reason != resetOff {
		t.Errorf("got %+v, want a reset with reason off", m)
	}
	if n := len(e.fn.of(subjects.ActionConnecting)); n != 0 {
		t.Errorf("register invoked %d times", n)
	}
	plain := e.dial(t, nil)
	id := e.fn.connID(t)
	pushText(t, e, id, "plain")
	if _, data := read(t, plain); string(data) != "plain" {
		t.Errorf("plain client got %q", data)
	}
}

// The client's acknowledgements free what the session keeps; a socket that
// still looks open when the client resumes elsewhere (it saw the drop
// first) is closed and its session handed on, not duplicated.
func TestSessionAcksAndTakeover(t *testing.T) {
	e := newEnv(t, nil, nil)
	sc := newSessClient(t, e.wsURL())
	id := sc.welcome.ID
	for i := range 5 {
		pushText(t, e, id, fmt.Sprint(i))
		sc.data()
	}
	waitFor(t, "frames kept", func() bool { return e.g.sessBytes.Load() == 5*2 })
	sc.ack()
	waitFor(t, "frames freed by the ack", func() bool { return e.g.sessBytes.Load() == 0 })

	old := sc.ws
	pushText(t, e, id, "5")
	w, reason := sc.resume(e.wsURL(), 5) // the old socket is still open
	if reason != "" || !*w.Resumed {
		t.Fatalf("resume over a live socket: %q %+v", reason, w)
	}
	if got := sc.data(); got != "5" {
		t.Fatalf("got %q, want 5", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		if _, _, err := old.Read(ctx); err != nil {
			break // the old socket was closed
		}
	}
	if e.fn.cleanups(id) != 0 || e.g.sessLive.Load() != 1 {
		t.Errorf("cleanups %d, live sessions %d: want 0 and 1", e.fn.cleanups(id), e.g.sessLive.Load())
	}
}

// The instance's bound on what all its sessions keep: a push that would
// pass it ends the session it is for (410), while the others keep theirs.
func TestSessionBufferTotalBound(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.ResumeBuffer, o.ResumeBufferTotal = 100, 150 })
	first, second := newSessClient(t, e.wsURL()), newSessClient(t, e.wsURL())
	first.drop()
	second.drop()
	waitFor(t, "both sessions suspended", func() bool { return e.g.sessSuspended.Load() == 2 })
	pushText(t, e, first.welcome.ID, strings.Repeat("a", 79)) // 80 kept with its prefix
	if st, body := e.push(t, pushBody(subjects.ActionDataSend, second.welcome.ID, subjects.DataText, strings.Repeat("b", 79))); st != http.StatusGone {
		t.Fatalf("push past the instance's total: %d %s, want 410", st, body)
	}
	waitFor(t, "the second session's cleanup", func() bool { return e.fn.cleanups(second.welcome.ID) == 1 })
	if _, reason := second.resume(e.wsURL(), 0); reason != resetSlow {
		t.Errorf("second session: %q, want %q", reason, resetSlow)
	}
	w, reason := first.resume(e.wsURL(), 0)
	if reason != "" || !*w.Resumed {
		t.Fatalf("first session: refused %q", reason)
	}
	if got := first.data(); got != strings.Repeat("a", 79) {
		t.Errorf("first session got %q", got)
	}
	if e.g.sessBytes.Load() != 80 {
		t.Errorf("%d bytes kept, want 80 (the first session's one push)", e.g.sessBytes.Load())
	}
}

// A session that kept more messages while its client was away than a send
// queue takes (--send-queue-messages) replays them all on resume, and takes
// live pushes after them: its bound is --resume-buffer.
func TestSessionReplaysMoreThanASendQueue(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.SendQueueMessages = 10 })
	sc := newSessClient(t, e.wsURL())
	id := sc.welcome.ID
	sc.drop()
	waitFor(t, "the session suspended", func() bool { return e.g.sessSuspended.Load() == 1 })
	for i := range 25 {
		pushText(t, e, id, fmt.Sprint(i))
	}
	if _, reason := sc.resume(e.wsURL(), 0); reason != "" {
		t.Fatalf("resume refused: %s", reason)
	}
	pushText(t, e, id, "live")
	for i := range 25 {
		if got := sc.data(); got != fmt.Sprint(i) {
			t.Fatalf("replay %d: got %q", i, got)
		}
	}
	if got := sc.data(); got != "live" {
		t.Fatalf("got %q, want the live push", got)
	}
}

// What sessions queue is accounted as pushes are: once every socket has
// written what it had, nothing is left counted in the send queue metric.
func TestSessionQueueAccounting(t *testing.T) {
	e := newEnv(t, nil, nil)
	sc := newSessClient(t, e.wsURL())
	pushText(t, e, sc.welcome.ID, "one")
	sc.data()
	sc.drop()
	waitFor(t, "the session suspended", func() bool { return e.g.sessSuspended.Load() == 1 })
	pushText(t, e, sc.welcome.ID, "two")
	if _, reason := sc.resume(e.wsURL(), 1); reason != "" {
		t.Fatalf("resume refused: %s", reason)
	}
	if got := sc.data(); got != "two" {
		t.Fatalf("got %q", got)
	}
	sc.send("hi") // acknowledged by a control message
	waitFor(t, "the send queue empty and accounted", func() bool { return e.g.queuedBytes.Load() == 0 })
}
