package wsclient_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects/wsclient"
)

// patience bounds every wait of these tests. It is far above what any step
// takes, so a loaded machine slows the tests down without failing them;
// nothing here asserts how long something took.
const patience = 30 * time.Second

// events records a client's events for the test to wait on.
type events struct {
	ch chan wsclient.Event
}

func newEvents() *events { return &events{ch: make(chan wsclient.Event, 256)} }

func (e *events) on(ev wsclient.Event) { e.ch <- ev }

// next waits for the next event and checks its kind.
func (e *events) next(t *testing.T, want wsclient.EventKind) wsclient.Event {
	t.Helper()
	select {
	case ev := <-e.ch:
		if ev.Kind != want {
			t.Fatalf("event %v, want %v", ev, want)
		}
		return ev
	case <-time.After(patience):
		t.Fatalf("no %v event within %v", want, patience)
	}
	return wsclient.Event{}
}

// none checks that no event is waiting.
func (e *events) none(t *testing.T) {
	t.Helper()
	select {
	case ev := <-e.ch:
		t.Fatalf("unexpected event %v", ev)
	default:
	}
}

// testOptions are quick to reconnect and log to the test.
func testOptions(t *testing.T, ev *events) wsclient.Options {
	return wsclient.Options{
		MinBackoff: time.Millisecond,
		MaxBackoff: 20 * time.Millisecond,
		OnEvent:    ev.on,
	}
}

func dial(t *testing.T, url string, opts wsclient.Options) *wsclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	c, err := wsclient.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		select {
		case <-c.Done():
		case <-time.After(patience):
			t.Errorf("client not done within %v of Close", patience)
		}
	})
	return c
}

func read(t *testing.T, c *wsclient.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	m, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return string(m.Data)
}

func readN(t *testing.T, c *wsclient.Client, n int) []string {
	t.Helper()
	var got []string
	for range n {
		got = append(got, read(t, c))
	}
	return got
}

func send(t *testing.T, c *wsclient.Client, msgs ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	for _, m := range msgs {
		if err := c.Send(ctx, websocket.MessageText, []byte(m)); err != nil {
			t.Fatalf("Send(%q): %v", m, err)
		}
	}
}

// waitFor polls cond until it holds, for at most patience.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, patience)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func numbered(prefix string, from, to int) []string {
	var s []string
	for i := from; i <= to; i++ {
		s = append(s, fmt.Sprintf("%s%d", prefix, i))
	}
	return s
}

func TestNewSession(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL("app=chat&sig=a%2Bb"), testOptions(t, ev))
	ev.next(t, wsclient.Open)

	if c.ID() != "inst~id1" || c.Token() != "tok1" {
		t.Fatalf("ID, Token = %q, %q, want the welcome's inst~id1, tok1", c.ID(), c.Token())
	}
	q := g.upgrades()[0]
	if q.Get("resume") != "1" || q.Get("app") != "chat" || q.Get("sig") != "a+b" || q.Has("received") {
		t.Fatalf("upgrade query %v, want resume=1 and the URL's own", q)
	}

	send(t, c, "hi", "there")
	if got, want := readN(t, c, 2), []string{"echo: hi", "echo: there"}; !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	passed, _, _ := g.snapshot(c.ID())
	if !slices.Equal(passed, []string{"hi", "there"}) {
		t.Fatalf("gateway passed on %q, want the payloads without their prefix", passed)
	}
	waitFor(t, "both sends acknowledged", func() bool { return c.Stats().Acked == 2 })
	st := c.Stats()
	if st.Sent != 2 || st.Received != 2 || st.Resumes != 0 || st.Resets != 0 || st.Resent != 0 {
		t.Fatalf("stats %+v", st)
	}
	ev.none(t)
}

func TestBinaryKeepsItsFrameType(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := c.Send(ctx, websocket.MessageBinary, []byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctx, websocket.MessageType(9), nil); err == nil {
		t.Fatal("Send with an invalid message type: no error")
	}
	m, err := c.Read(ctx)
	if err != nil || string(m.Data) != "echo: \x00\x01\x02" {
		t.Fatalf("Read = %q, %v", m.Data, err)
	}
}

// A drop while the client had not taken every message (the reader waits,
// ReadBuffer is full, the rest is in flight): the resume gets exactly the
// ones it had not received, in order, nothing twice.
func TestResumeAfterDropGetsExactlyTheMissedMessages(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	opts := testOptions(t, ev)
	opts.ReadBuffer = 2
	opts.AckEvery = 1000 // no acks: the gateway keeps everything
	opts.AckAfter = time.Hour
	c := dial(t, g.URL("app=chat"), opts)
	ev.next(t, wsclient.Open)
	id := c.ID()

	g.push(t, id, numbered("m", 1, 10)...)
	waitFor(t, "the read queue full", func() bool { return c.Stats().Received == 2 })
	c.Drop()
	ev.next(t, wsclient.Resumed)
	g.push(t, id, numbered("m", 11, 12)...)

	if got, want := readN(t, c, 12), numbered("m", 1, 12); !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	ups := g.upgrades()
	if len(ups) != 2 {
		t.Fatalf("%d upgrades, want 2", len(ups))
	}
	q := ups[1]
	key := g.session(id).key
	if q.Get("resume") != key || q.Get("received") != "2" || q.Get("app") != "chat" {
		t.Fatalf("resume query %v, want resume=%q received=2 app=chat", q, key)
	}
	if c.ID() != id {
		t.Fatalf("ID after a resume %q, want %q", c.ID(), id)
	}
	// Nothing more: the next message is the next pushed.
	g.push(t, id, "last")
	if got := read(t, c); got != "last" {
		t.Fatalf("read %q after the resumed ones, want last", got)
	}
	if st := c.Stats(); st.Received != 13 || st.Resumes != 1 {
		t.Fatalf("stats %+v, want 13 received and 1 resume", st)
	}
	ev.none(t)
}

// Messages the gateway never got are sent again after a resume, once, in
// order, before new ones.
func TestResumeResendsWhatWasNotPassedOn(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	id := c.ID()

	send(t, c, "a1")
	waitFor(t, "a1 acknowledged", func() bool { return c.Stats().Acked == 1 })
	g.stall(id) // a2..a4 are lost on the way
	send(t, c, "a2", "a3", "a4")
	waitFor(t, "a2..a4 written", func() bool { return c.Stats().Sent == 4 })
	c.Drop()
	ev.next(t, wsclient.Resumed)
	send(t, c, "a5")

	waitFor(t, "a5 acknowledged", func() bool { return c.Stats().Acked == 5 })
	passed, _, _ := g.snapshot(id)
	if want := numbered("a", 1, 5); !slices.Equal(passed, want) {
		t.Fatalf("gateway passed on %q, want %q", passed, want)
	}
	if st := c.Stats(); st.Sent != 5 || st.Resent != 3 {
		t.Fatalf("stats %+v, want 5 sent and 3 resent", st)
	}
	var want []string
	for _, m := range numbered("a", 1, 5) {
		want = append(want, "echo: "+m)
	}
	if got := readN(t, c, 5); !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// Messages the gateway passed on but whose acks were lost are dropped on
// the welcome's "in", not sent twice.
func TestResumeDoesNotResendWhatWasPassedOn(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	opts := testOptions(t, ev)
	c := dial(t, g.URL(""), opts)
	ev.next(t, wsclient.Open)
	id := c.ID()

	g.setSilent(id, true)
	send(t, c, "b1", "b2", "b3")
	waitFor(t, "b1..b3 passed on", func() bool { p, _, _ := g.snapshot(id); return len(p) == 3 })
	if st := c.Stats(); st.Acked != 0 {
		t.Fatalf("acked %d with the gateway silent", st.Acked)
	}
	g.setSilent(id, false)
	c.Drop()
	ev.next(t, wsclient.Resumed)
	if st := c.Stats(); st.Acked != 3 || st.Resent != 0 {
		t.Fatalf("stats after the welcome %+v, want 3 acked (its in) and none resent", st)
	}
	send(t, c, "b4")
	waitFor(t, "b4 acknowledged", func() bool { return c.Stats().Acked == 4 })
	passed, _, _ := g.snapshot(id)
	if want := numbered("b", 1, 4); !slices.Equal(passed, want) {
		t.Fatalf("gateway passed on %q, want %q", passed, want)
	}
}

// A session the gateway no longer knows is reset: a Reset event with the
// reason and the count of messages dropped, then a new session (Open) with
// new ids; what was received before is still read first.
func TestResetStartsAFreshSession(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL("app=chat"), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	old := c.ID()

	g.push(t, old, "old1")
	waitFor(t, "old1 received", func() bool { return c.Stats().Received == 1 })
	g.stall(old)
	send(t, c, "lost1", "lost2")
	waitFor(t, "lost1, lost2 written", func() bool { return c.Stats().Sent == 2 })
	g.forget(old)
	c.Drop()

	r := ev.next(t, wsclient.Reset)
	var re *wsclient.ResetError
	if r.Reason != "unknown" || r.Code != 4001 || !errors.As(r.Err, &re) || re.Lost != 2 ||
		len(re.Unsent) != 2 || string(re.Unsent[0].Data) != "lost1" || string(re.Unsent[1].Data) != "lost2" {
		t.Fatalf("reset event %+v, want reason unknown, code 4001, a ResetError with lost1 and lost2", r)
	}
	ev.next(t, wsclient.Open)
	if c.ID() == old || c.ID() == "" || c.Token() == "tok1" {
		t.Fatalf("ID, Token after a reset %q, %q: want the new session's", c.ID(), c.Token())
	}
	ups := g.upgrades()
	if q := ups[len(ups)-1]; q.Get("resume") != "1" || q.Has("received") || q.Get("app") != "chat" {
		t.Fatalf("upgrade after the reset %v, want resume=1 app=chat", q)
	}

	send(t, c, "new1")
	if got := readN(t, c, 2); !slices.Equal(got, []string{"old1", "echo: new1"}) {
		t.Fatalf("read %q, want old1 then echo: new1", got)
	}
	passed, _, _ := g.snapshot(c.ID())
	if !slices.Equal(passed, []string{"new1"}) {
		t.Fatalf("new session passed on %q, want only new1 (the old session's sends are not resent)", passed)
	}
	if st := c.Stats(); st.Resets != 1 || st.Lost != 2 || st.Resumes != 0 {
		t.Fatalf("stats %+v, want 1 reset, 2 lost", st)
	}
}

// A reset on the live socket (reset, then 4001) also starts a new session.
func TestResetOnTheLiveSocket(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	g.reset(t, c.ID(), "slow")
	if r := ev.next(t, wsclient.Reset); r.Reason != "slow" {
		t.Fatalf("reset reason %q, want slow", r.Reason)
	}
	ev.next(t, wsclient.Open)
	send(t, c, "x")
	if got := read(t, c); got != "echo: x" {
		t.Fatalf("read %q on the new session", got)
	}
}

// 1001 (an instance shutting down) suspends the session, and 1013 asks the
// client to resume again: the client resumes.
func TestGoingAwayResumes(t *testing.T) {
	for _, code := range []websocket.StatusCode{websocket.StatusGoingAway, websocket.StatusTryAgainLater} {
		t.Run(fmt.Sprint(int(code)), func(t *testing.T) {
			g := newFakeGateway(t)
			ev := newEvents()
			c := dial(t, g.URL(""), testOptions(t, ev))
			ev.next(t, wsclient.Open)
			id := c.ID()
			g.end(t, id, code, "come back")
			ev.next(t, wsclient.Resumed)
			g.push(t, id, "after")
			if got := read(t, c); got != "after" {
				t.Fatalf("read %q", got)
			}
			if c.ID() != id {
				t.Fatalf("ID %q after a resume, want %q", c.ID(), id)
			}
		})
	}
}

// A resume offers the subprotocol chosen when the session started, alone;
// a new session offers them all again.
func TestSubprotocolKeptAcrossResumes(t *testing.T) {
	g := newFakeGateway(t)
	g.protos = []string{"chat.v2", "chat.v1"}
	ev := newEvents()
	opts := testOptions(t, ev)
	opts.Subprotocols = []string{"chat.v1", "chat.v2"}
	c := dial(t, g.URL(""), opts)
	ev.next(t, wsclient.Open)
	if c.Subprotocol() != "chat.v2" {
		t.Fatalf("Subprotocol %q, want chat.v2 (the gateway's choice)", c.Subprotocol())
	}
	c.Drop()
	ev.next(t, wsclient.Resumed)
	g.reset(t, c.ID(), "expired")
	ev.next(t, wsclient.Reset)
	ev.next(t, wsclient.Open)
	g.mu.Lock()
	offered := append([]string(nil), g.offered...)
	g.mu.Unlock()
	if want := []string{"chat.v1,chat.v2", "chat.v2", "chat.v1,chat.v2"}; !slices.Equal(offered, want) {
		t.Fatalf("offered %q, want %q", offered, want)
	}
}

// A socket the gateway cuts without a close frame is resumed.
func TestServerSideDropResumes(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	g.cut(c.ID())
	ev.next(t, wsclient.Resumed)
}

// Any other close from the gateway ends the client: Closed, then Read
// returns what was buffered and an error, Send errors, no reconnect.
func TestServerCloseEndsTheClient(t *testing.T) {
	for _, code := range []websocket.StatusCode{websocket.StatusNormalClosure, websocket.StatusPolicyViolation, websocket.StatusInternalError} {
		t.Run(fmt.Sprint(int(code)), func(t *testing.T) {
			g := newFakeGateway(t)
			ev := newEvents()
			c := dial(t, g.URL(""), testOptions(t, ev))
			ev.next(t, wsclient.Open)
			g.push(t, c.ID(), "x1", "x2")
			waitFor(t, "x1, x2 received", func() bool { return c.Stats().Received == 2 })
			g.end(t, c.ID(), code, "bye")

			cl := ev.next(t, wsclient.Closed)
			if cl.Code != code || cl.Reason != "bye" || cl.Err == nil {
				t.Fatalf("closed event %+v, want code %d reason bye and an error", cl, code)
			}
			if got := readN(t, c, 2); !slices.Equal(got, []string{"x1", "x2"}) {
				t.Fatalf("read %q after the close, want the buffered x1 x2", got)
			}
			_, err := c.Read(context.Background())
			if !errors.Is(err, wsclient.ErrClosed) || websocket.CloseStatus(err) != code {
				t.Fatalf("Read after the buffered ones: %v, want ErrClosed wrapping close %d", err, code)
			}
			if err := c.Send(context.Background(), websocket.MessageText, []byte("late")); !errors.Is(err, wsclient.ErrClosed) {
				t.Fatalf("Send after the end: %v, want ErrClosed", err)
			}
			select {
			case <-c.Done():
			case <-time.After(patience):
				t.Fatal("Done not closed")
			}
			if n := len(g.upgrades()); n != 1 {
				t.Fatalf("%d upgrades, want 1 (no reconnect after close %d)", n, code)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("Close after the end: %v", err)
			}
			ev.none(t)
		})
	}
}

// The client acks after AckEvery messages (never before), and once more
// right before its close frame.
func TestAcksEveryN(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	opts := testOptions(t, ev)
	opts.AckEvery = 5
	opts.AckAfter = time.Hour
	c := dial(t, g.URL(""), opts)
	ev.next(t, wsclient.Open)
	id := c.ID()

	g.push(t, id, numbered("m", 1, 12)...)
	readN(t, c, 12)
	// Each ack says how many had arrived when it was written: 5 and 10,
	// or 7 and 12, or 8 alone… but fewer than 5 are left unacked.
	waitFor(t, "fewer than 5 messages unacked", func() bool {
		_, acks, _ := g.snapshot(id)
		return len(acks) > 0 && acks[len(acks)-1] > 12-5
	})
	_, acks, _ := g.snapshot(id)
	prev := uint64(0)
	for _, a := range acks {
		if a < prev+5 {
			t.Fatalf("acks %v: one less than AckEvery=5 after the one before", acks)
		}
		prev = a
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, acks, _ := g.snapshot(id); acks[len(acks)-1] != 12 {
		t.Fatalf("after Close: acks %v, want a last ack of 12 before the close frame", acks)
	}
	waitFor(t, "the gateway sees close 1000", func() bool {
		_, _, ended := g.snapshot(id)
		return ended == websocket.StatusNormalClosure
	})
	ev.next(t, wsclient.Closed)
}

// Fewer than AckEvery messages are acked AckAfter after the first.
func TestAcksAfterADelay(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	opts := testOptions(t, ev)
	opts.AckEvery = 1000
	opts.AckAfter = 10 * time.Millisecond
	c := dial(t, g.URL(""), opts)
	ev.next(t, wsclient.Open)
	g.push(t, c.ID(), "m1", "m2", "m3")
	readN(t, c, 3)
	waitFor(t, "an ack of 3", func() bool {
		_, acks, _ := g.snapshot(c.ID())
		return slices.Contains(acks, 3)
	})
}

// Close writes what Send queued, then closes with 1000.
func TestCloseWritesWhatIsQueued(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	g.noEcho = true
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	id := c.ID()
	want := numbered("q", 1, 50)
	send(t, c, want...)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The gateway reads in order: what was written before the close frame
	// was passed on before it answered the close.
	if passed, _, _ := g.snapshot(id); !slices.Equal(passed, want) {
		t.Fatalf("gateway passed on %d messages before the close, want all 50", len(passed))
	}
	waitFor(t, "the gateway sees close 1000", func() bool {
		_, _, ended := g.snapshot(id)
		return ended == websocket.StatusNormalClosure
	})
	cl := ev.next(t, wsclient.Closed)
	if cl.Code != websocket.StatusNormalClosure || cl.Err != nil {
		t.Fatalf("closed event %+v", cl)
	}
	if err := c.Send(context.Background(), websocket.MessageText, []byte("late")); !errors.Is(err, wsclient.ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
	if _, err := c.Read(context.Background()); !errors.Is(err, wsclient.ErrClosed) {
		t.Fatalf("Read after Close: %v, want ErrClosed", err)
	}
}

// Send blocks while SendBuffer messages wait for the gateway's ack.
func TestSendBlocksWhileTheBufferIsFull(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	opts := testOptions(t, ev)
	opts.SendBuffer = 2
	c := dial(t, g.URL(""), opts)
	ev.next(t, wsclient.Open)
	g.stall(c.ID())
	send(t, c, "s1", "s2")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := c.Send(ctx, websocket.MessageText, []byte("s3")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send into a full buffer: %v, want DeadlineExceeded", err)
	}
	// The resume brings the acks, and room.
	c.Drop()
	ev.next(t, wsclient.Resumed)
	send(t, c, "s3")
	waitFor(t, "s3 acknowledged", func() bool { return c.Stats().Acked == 3 })
}

// The client keeps trying when the gateway refuses upgrades for a while
// (503 during a rolling restart, 429), and gives up on a 4xx that will not
// change.
func TestReconnectRetriesThenGivesUp(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)

	g.mu.Lock()
	g.refuse = []int{http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusBadGateway}
	g.mu.Unlock()
	c.Drop()
	ev.next(t, wsclient.Resumed)
	if n := len(g.upgrades()); n != 5 {
		t.Fatalf("%d upgrades, want 5: Dial, 3 refused, the resume", n)
	}

	g.mu.Lock()
	g.refuse = []int{http.StatusForbidden}
	g.mu.Unlock()
	c.Drop()
	cl := ev.next(t, wsclient.Closed)
	var ue *wsclient.UpgradeError
	if !errors.As(cl.Err, &ue) || ue.StatusCode != http.StatusForbidden {
		t.Fatalf("closed event %+v, want an UpgradeError 403", cl)
	}
	if _, err := c.Read(context.Background()); !errors.Is(err, wsclient.ErrClosed) {
		t.Fatalf("Read: %v, want ErrClosed", err)
	}
}

func TestDialErrors(t *testing.T) {
	g := newFakeGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()

	g.mu.Lock()
	g.refuse = []int{http.StatusForbidden}
	g.mu.Unlock()
	_, err := wsclient.Dial(ctx, g.URL("secret=s3cr3t"), wsclient.Options{})
	var ue *wsclient.UpgradeError
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusForbidden {
		t.Fatalf("Dial refused with 403: %v, want an UpgradeError", err)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("the error shows the URL's query: %v", err)
	}

	g.mu.Lock()
	g.noWelcome = true
	g.mu.Unlock()
	if _, err := wsclient.Dial(ctx, g.URL(""), wsclient.Options{}); !errors.Is(err, wsclient.ErrProtocol) {
		t.Fatalf("Dial to a gateway without sessions: %v, want ErrProtocol", err)
	}
	g.mu.Lock()
	g.noWelcome = false
	g.mu.Unlock()

	if _, err := wsclient.Dial(ctx, "ftp://example.com/ws", wsclient.Options{}); err == nil {
		t.Fatal("Dial ftp://: no error")
	}
	if _, err := wsclient.Dial(ctx, g.URL(""), wsclient.Options{SendBuffer: -1}); err == nil || !strings.Contains(err.Error(), "SendBuffer") {
		t.Fatalf("Dial with SendBuffer -1: %v, want an error naming SendBuffer", err)
	}
	if _, err := wsclient.Dial(ctx, g.URL(""), wsclient.Options{MinBackoff: time.Second, MaxBackoff: time.Millisecond}); err == nil {
		t.Fatal("Dial with MaxBackoff below MinBackoff: no error")
	}
}

// A gateway that runs without sessions answers a new session with a reset
// "off": Dial says so.
func TestDialSessionsOff(t *testing.T) {
	srv := newOffGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if _, err := wsclient.Dial(ctx, srv, wsclient.Options{}); !errors.Is(err, wsclient.ErrSessionsOff) {
		t.Fatalf("Dial: %v, want ErrSessionsOff", err)
	}
}

func TestPlainMode(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	opts := testOptions(t, ev)
	opts.NoResume = true
	c := dial(t, g.URL("app=chat"), opts)
	ev.next(t, wsclient.Open)
	if q := g.upgrades()[0]; q.Has("resume") || q.Get("app") != "chat" {
		t.Fatalf("plain upgrade query %v", q)
	}
	if c.ID() != "" {
		t.Fatalf("ID %q in plain mode, want empty", c.ID())
	}
	send(t, c, "p1", "p2")
	if got := readN(t, c, 2); !slices.Equal(got, []string{"echo: p1", "echo: p2"}) {
		t.Fatalf("read %q: want the echoes without any prefix", got)
	}
	c.Drop()
	ev.next(t, wsclient.Closed)
	if _, err := c.Read(context.Background()); !errors.Is(err, wsclient.ErrClosed) {
		t.Fatalf("Read after a drop in plain mode: %v, want ErrClosed", err)
	}
	if n := len(g.upgrades()); n != 1 {
		t.Fatalf("%d upgrades: plain mode must not reconnect", n)
	}
}

// Close, Drop, Send and Read from many goroutines at once: for the race
// detector, and for Close to end everything.
func TestConcurrentUse(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	opts := testOptions(t, ev)
	opts.OnEvent = nil
	c := dial(t, g.URL(""), opts)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := 0; ; j++ {
				if err := c.Send(ctx, websocket.MessageText, []byte(fmt.Sprint(i, j))); err != nil {
					return
				}
			}
		})
	}
	var orderErr error
	wg.Go(func() {
		last := map[int]int{}
		for {
			m, err := c.Read(ctx)
			if err != nil {
				return
			}
			var i, j int
			if _, err := fmt.Sscanf(string(m.Data), "echo: %d %d", &i, &j); err != nil {
				orderErr = fmt.Errorf("read %q: %v", m.Data, err)
				return
			}
			if prev, ok := last[i]; (ok && j != prev+1) || (!ok && j != 0) {
				orderErr = fmt.Errorf("sender %d: read %d after %d: a message lost, repeated or out of order", i, j, prev)
				return
			}
			last[i] = j
		}
	})
	wg.Go(func() {
		for range 5 {
			c.Drop()
			_ = c.ID()
			_ = c.Stats()
			time.Sleep(10 * time.Millisecond)
		}
	})
	waitFor(t, "some traffic", func() bool { return c.Stats().Received > 20 })
	var cw sync.WaitGroup
	for range 3 {
		cw.Go(func() { _ = c.Close() })
	}
	cw.Wait()
	wg.Wait()
	<-c.Done()
	if orderErr != nil {
		t.Fatal(orderErr)
	}
}

// Close from within OnEvent does not deadlock.
func TestCloseFromOnEvent(t *testing.T) {
	g := newFakeGateway(t)
	var c *wsclient.Client
	ready := make(chan struct{})
	opts := wsclient.Options{OnEvent: func(ev wsclient.Event) {
		if ev.Kind == wsclient.Reset {
			<-ready
			_ = c.Close()
		}
	}}
	c = dial(t, g.URL(""), opts)
	close(ready)
	g.reset(t, c.ID(), "expired")
	select {
	case <-c.Done():
	case <-time.After(patience):
		t.Fatal("not done after Close from OnEvent")
	}
}

// A message larger than ReadLimit ends the client with 1009: resuming would
// meet it again.
func TestReadLimit(t *testing.T) {
	// One past the limit, and far past it (the library's own limit).
	for _, size := range []int{11, 100 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			g := newFakeGateway(t)
			ev := newEvents()
			opts := testOptions(t, ev)
			opts.ReadLimit = 10
			c := dial(t, g.URL(""), opts)
			ev.next(t, wsclient.Open)
			id := c.ID()
			g.push(t, id, "0123456789", strings.Repeat("x", size))
			if got := read(t, c); got != "0123456789" {
				t.Fatalf("read %q, want the message at the limit", got)
			}
			cl := ev.next(t, wsclient.Closed)
			if cl.Code != websocket.StatusMessageTooBig || !errors.Is(cl.Err, websocket.ErrMessageTooBig) {
				t.Fatalf("closed event %+v, want 1009 and ErrMessageTooBig", cl)
			}
			waitFor(t, "the gateway sees 1009", func() bool {
				_, _, ended := g.snapshot(id)
				return ended == websocket.StatusMessageTooBig
			})
		})
	}
}

// A gateway that breaks the protocol ends the client; it is told with 1002.
func TestProtocolErrorEndsTheClient(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	id := c.ID()
	g.push(t, id, "ok")
	g.raw(t, id, "no prefix")
	cl := ev.next(t, wsclient.Closed)
	if !errors.Is(cl.Err, wsclient.ErrProtocol) || cl.Code != websocket.StatusProtocolError {
		t.Fatalf("closed event %+v, want ErrProtocol and 1002", cl)
	}
	if got := read(t, c); got != "ok" {
		t.Fatalf("read %q, want the message before the bad one", got)
	}
	if _, err := c.Read(context.Background()); !errors.Is(err, wsclient.ErrProtocol) || !errors.Is(err, wsclient.ErrClosed) {
		t.Fatalf("Read: %v, want ErrClosed wrapping ErrProtocol", err)
	}
	waitFor(t, "the gateway sees 1002", func() bool {
		_, _, ended := g.snapshot(id)
		return ended == websocket.StatusProtocolError
	})
}

// Close while the client cannot reconnect: it stops, and says what it could
// not write.
func TestCloseWhileReconnecting(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	g.mu.Lock()
	for range 100000 {
		g.refuse = append(g.refuse, http.StatusServiceUnavailable)
	}
	g.mu.Unlock()
	c.Drop()
	waitFor(t, "a refused reconnect", func() bool { return len(g.upgrades()) > 2 })
	send(t, c, "queued")
	err := c.Close()
	if err == nil || !strings.Contains(err.Error(), "1 queued message") {
		t.Fatalf("Close while reconnecting: %v, want an error counting 1 queued message", err)
	}
	if cl := ev.next(t, wsclient.Closed); cl.Err != nil {
		t.Fatalf("closed event %+v: Close is no error", cl)
	}
	<-c.Done()
}

// A gateway whose sessions were turned off meanwhile: the resume is reset
// (off), the new session refused (off): the client ends with ErrSessionsOff.
func TestSessionsTurnedOffWhileAway(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	g.mu.Lock()
	g.off = true
	g.mu.Unlock()
	c.Drop()
	if r := ev.next(t, wsclient.Reset); r.Reason != "off" {
		t.Fatalf("reset %+v, want reason off", r)
	}
	if cl := ev.next(t, wsclient.Closed); !errors.Is(cl.Err, wsclient.ErrSessionsOff) {
		t.Fatalf("closed event %+v, want ErrSessionsOff", cl)
	}
}

// A gateway that answers a resume with a new session (resumed false) is
// taken as a reset.
func TestNewSessionInsteadOfResume(t *testing.T) {
	g := newFakeGateway(t)
	ev := newEvents()
	c := dial(t, g.URL(""), testOptions(t, ev))
	ev.next(t, wsclient.Open)
	old := c.ID()
	g.mu.Lock()
	g.amnesia = true
	g.mu.Unlock()
	c.Drop()
	if r := ev.next(t, wsclient.Reset); r.Reason != "not resumed" {
		t.Fatalf("reset %+v, want reason \"not resumed\"", r)
	}
	ev.next(t, wsclient.Open)
	if c.ID() == old {
		t.Fatal("ID unchanged after a new session")
	}
	send(t, c, "n1")
	if got := read(t, c); got != "echo: n1" {
		t.Fatalf("read %q", got)
	}
}
