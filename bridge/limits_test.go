package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// apiReq sends one API request and returns the reply's error text ("" when
// the reply is not an error).
func (e *env) apiReq(subject string, body []byte) (reply []byte, errText string) {
	e.t.Helper()
	m, err := e.nc.Request(subject, body, 10*time.Second)
	if err != nil {
		e.t.Fatalf("request %s: %v", subject, err)
	}
	var ae subjects.APIError
	_ = json.Unmarshal(m.Data, &ae)
	return m.Data, ae.Error
}

// alive checks that the bridge still works after an attack: its NATS
// connection is open, it is healthy and ready, and a send reaches the
// gateway.
func (e *env) alive(b *Bridge, id string) {
	e.t.Helper()
	if b.nc.IsClosed() || b.Healthy() != nil {
		e.t.Fatalf("bridge connection closed: %v (last error %v)", b.Healthy(), b.nc.LastError())
	}
	waitFor(e.t, "bridge ready", 10*time.Second, func() bool { return b.Ready() == nil })
	before := len(e.tg.of(id))
	e.publish(e.names.Send(subjects.Token(id)), []byte("still here"))
	waitFor(e.t, "a send after the attack", 20*time.Second, func() bool { return len(e.tg.of(id)) > before })
}

// Item 1: a request whose token would make a subject past the server's
// max_control_line used to close the bridge's NATS connection for good.
func TestAttackLongTokenInAPIRequest(t *testing.T) {
	e := newEnv(t, nil)
	e.register("victim")
	b := e.start(nil)
	long := strings.Repeat("A", 4060)
	for _, tc := range []struct{ subject, body string }{
		{e.names.ConnGet(), `{"token":"` + long + `"}`},
		{e.names.GroupAdd(), `{"token":"` + long + `","groups":["g"]}`},
		{e.names.GroupRemove(), `{"token":"` + long + `","groups":["g"]}`},
	} {
		_, errText := e.apiReq(tc.subject, []byte(tc.body))
		if !strings.Contains(errText, "limit") {
			t.Errorf("%s with a 4,060-byte token: error %q, want one naming the limit", tc.subject, errText)
		}
	}
	// At the limit the token is used (and not found); one past, refused.
	atLimit := strings.Repeat("A", subjects.MaxTokenLen)
	if _, errText := e.apiReq(e.names.ConnGet(), []byte(`{"token":"`+atLimit+`"}`)); errText != errNotFound.Error() {
		t.Errorf("token at the limit: %q, want %q", errText, errNotFound)
	}
	if _, errText := e.apiReq(e.names.ConnGet(), []byte(`{"token":"`+atLimit+`A"}`)); !strings.Contains(errText, "limit") {
		t.Errorf("token one past the limit: %q", errText)
	}
	e.alive(b, "victim")
}

// Item 2: a send to an over-long token was pushed, answered 404, and its
// dead letter and disconnect subjects closed the connection; the message
// stayed in WS_OUT and killed every restarted bridge.
func TestAttackLongTokenOutboundSubject(t *testing.T) {
	e := newEnv(t, func(p push, _ int) (int, int) {
		if p.ConnID != "victim" {
			return http.StatusNotFound, 404
		}
		return http.StatusOK, 0
	})
	e.register("victim")
	dlq := e.collect(e.names.DeadLetters())
	b := e.start(nil)
	// As `nats pub` does it: a core publish, captured by the stream.
	long := strings.Repeat("A", 4000)
	if err := e.nc.Publish(e.names.Send(long), []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead letter", 20*time.Second, func() bool { return dlq.bySubject(e.names.DeadLetter(subjects.KindInvalid, "")) != nil })
	m := dlq.bySubject(e.names.DeadLetter(subjects.KindInvalid, ""))
	if m.Header.Get(subjects.HeaderReason) != "invalid" || !strings.Contains(m.Header.Get(subjects.HeaderError), "limit") {
		t.Errorf("dead letter headers %v", m.Header)
	}
	if e.tg.delivered() != 0 || len(e.tg.of(strings.Repeat("\x00", 3000))) != 0 {
		t.Error("the over-long token was pushed")
	}
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	e.alive(b, "victim")
}

// Item 3: a dead letter of a body just under max_payload, with its headers
// added, is over max_payload: its publish failed forever and the
// connection's later messages waited behind it.
func TestAttackDeadLetterOverMaxPayload(t *testing.T) {
	e := newEnv(t, func(p push, _ int) (int, int) {
		if len(p.Data) > 1000 {
			return http.StatusRequestEntityTooLarge, 0
		}
		return http.StatusOK, 0
	})
	e.register("big")
	dlq := e.collect(e.names.DeadLetters())
	b := e.start(nil)
	body := []byte(strings.Repeat("b", int(e.nc.MaxPayload())-300))
	e.publish(e.names.Send(subjects.Token("big")), body, "X-App", strings.Repeat("h", 200))
	e.publish(e.names.Send(subjects.Token("big")), []byte("after"))
	waitFor(t, "the later message pushed", 30*time.Second, func() bool { return len(e.tg.of("big")) == 1 })
	if got := e.tg.of("big")[0].Data; got != "after" {
		t.Errorf("pushed %q", got)
	}
	dlSubj := e.names.DeadLetter(subjects.KindSend, subjects.Token("big"))
	waitFor(t, "the dead letter", 20*time.Second, func() bool { return dlq.bySubject(dlSubj) != nil })
	m := dlq.bySubject(dlSubj)
	if m.Header.Get(subjects.HeaderTruncated) != strconv.Itoa(len(body)) || m.Header.Get(subjects.HeaderStatus) != "413" ||
		m.Header.Get("X-App") == "" || len(m.Data) >= len(body) || !strings.HasPrefix(string(body), string(m.Data)) {
		t.Errorf("dead letter: %d bytes, headers %v", len(m.Data), m.Header)
	}
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	e.alive(b, "big")
}

// The dead letter is cut only when needed, and reduced to its metadata when
// the original headers alone do not fit.
func TestDeadLetterMsgFits(t *testing.T) {
	meta := nats.Header{subjects.HeaderReason: {"permanent"}, subjects.HeaderStatus: {"400"}}
	orig := nats.Header{subjects.HeaderConnID: {"c1"}, "X-Big": {strings.Repeat("x", 5000)}}
	body := []byte(strings.Repeat("b", 10000))
	for _, tc := range []struct {
		max           int64
		wantLen       int
		wantTruncated string
		wantOrig      bool
	}{
		{max: 1 << 20, wantLen: len(body), wantOrig: true},
		{max: 12000, wantLen: -1, wantTruncated: "10000", wantOrig: true},
		{max: 3000, wantLen: -1, wantTruncated: "headers,10000"},
		{max: 0, wantLen: 0, wantTruncated: "headers,10000"},
	} {
		m := deadLetterMsg("ws.dlq.send.YzE", body, orig, meta, tc.max)
		size := int64(len(m.Data) + headerSize(m.Header))
		if tc.max > 0 && size > tc.max {
			t.Errorf("max %d: dead letter of %d bytes", tc.max, size)
		}
		if tc.wantLen >= 0 && len(m.Data) != tc.wantLen {
			t.Errorf("max %d: body %d bytes, want %d", tc.max, len(m.Data), tc.wantLen)
		}
		if got := m.Header.Get(subjects.HeaderTruncated); got != tc.wantTruncated {
			t.Errorf("max %d: Ws-Truncated %q, want %q", tc.max, got, tc.wantTruncated)
		}
		if (m.Header.Get("X-Big") != "") != tc.wantOrig || m.Header.Get(subjects.HeaderConnID) != "c1" || m.Header.Get(subjects.HeaderReason) != "permanent" {
			t.Errorf("max %d: headers %v", tc.max, m.Header)
		}
	}
}

// Item 4: with the gateway not answering, held messages were bounded by
// count only: 800 messages of 1 MB took 1.35 GB.
func TestHeldBytesBounded(t *testing.T) {
	var open atomic.Bool
	e := newEnv(t, func(p push, _ int) (int, int) {
		if !open.Load() {
			return http.StatusServiceUnavailable, 0
		}
		return http.StatusOK, 0
	})
	const (
		n       = 40
		size    = 256 << 10
		maxHeld = 2 << 20
	)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("held-%02d", i)
	}
	e.register(ids...)
	b := e.start(func(o *Options) {
		o.MaxHeldBytes = maxHeld
		o.MaxAttempts = 1000
		o.BackoffBase = 20 * time.Millisecond
		o.BackoffMax = 100 * time.Millisecond
	})
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			b.hmu.Lock()
			h := b.heldBytes
			b.hmu.Unlock()
			if h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	msgs := make([]*nats.Msg, n)
	for i, id := range ids {
		msgs[i] = &nats.Msg{Subject: e.names.Send(subjects.Token(id)), Data: []byte(strings.Repeat(string(rune('a'+i%26)), size))}
	}
	e.publishAsync(msgs)
	// Wait until the bridge is full: the budget is reached and the rest
	// waits in the stream.
	waitFor(t, "the budget filled", 20*time.Second, func() bool {
		b.hmu.Lock()
		defer b.hmu.Unlock()
		return b.heldBytes+2*size > maxHeld
	})
	held := b.heldCount()
	if held >= n {
		t.Errorf("all %d messages held at once under a %d-byte budget", held, maxHeld)
	}
	open.Store(true)
	waitFor(t, "all delivered", 60*time.Second, func() bool { return e.tg.delivered() == n })
	close(stop)
	<-sampled
	one := heldSize(&jsMsgStub{data: msgs[0].Data})
	if p := peak.Load(); p > maxHeld+one {
		t.Errorf("held bytes peaked at %d, budget %d (+ one message of %d)", p, maxHeld, one)
	}
	waitFor(t, "budget released", 10*time.Second, func() bool {
		b.hmu.Lock()
		defer b.hmu.Unlock()
		return b.heldBytes == 0
	})
}

// jsMsgStub is enough of a jetstream.Msg for heldSize.
type jsMsgStub struct {
	jetstream.Msg
	data []byte
}

func (m *jsMsgStub) Data() []byte         { return m.data }
func (m *jsMsgStub) Headers() nats.Header { return nil }

// Item 5: a 302 was followed with a GET (success recorded, message lost),
// a 307 re-posted the connection id and data to another host.
func TestRedirectNotFollowed(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		elsewhere.Add(1)
		fmt.Fprint(w, `{"errNo":0,"errMsg":"ok"}`)
	}))
	defer other.Close()
	for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			e := newEnv(t, nil)
			redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, other.URL+"/push", code)
			}))
			defer redirect.Close()
			e.register("moved")
			dlq := e.collect(e.names.DeadLetters())
			e.start(func(o *Options) { o.PushURL = redirect.URL + "/push" })
			e.publish(e.names.Send(subjects.Token("moved")), []byte("secret"))
			subj := e.names.DeadLetter(subjects.KindSend, subjects.Token("moved"))
			waitFor(t, "the dead letter", 20*time.Second, func() bool { return dlq.bySubject(subj) != nil })
			m := dlq.bySubject(subj)
			if m.Header.Get(subjects.HeaderStatus) != strconv.Itoa(code) || m.Header.Get(subjects.HeaderReason) != "permanent" || string(m.Data) != "secret" {
				t.Errorf("dead letter %q headers %v", m.Data, m.Header)
			}
			if n := elsewhere.Load(); n != 0 {
				t.Errorf("the redirect target got %d requests", n)
			}
		})
	}
}

// Item 6: a record with a group twice kept receiving the group's sends after
// group.remove.
func TestDuplicateGroupRemovedOnce(t *testing.T) {
	e := newEnv(t, nil)
	e.registerEvents(func(ev *subjects.ConnectEvent) { ev.Groups = []string{"g1", "g1", "g2"} }, "dup")
	b := e.start(nil)
	reply, errText := e.apiReq(e.names.GroupRemove(), []byte(`{"token":"`+subjects.Token("dup")+`","groups":["g1"]}`))
	var rec subjects.ConnectEvent
	if err := json.Unmarshal(reply, &rec); errText != "" || err != nil || strings.Join(rec.Groups, ",") != "g2" {
		t.Fatalf("group.remove g1 = %s (%q)", reply, errText)
	}
	reply, _ = e.apiReq(e.names.GroupAdd(), []byte(`{"token":"`+subjects.Token("dup")+`","groups":["g3","g3","g2"]}`))
	rec = subjects.ConnectEvent{}
	if err := json.Unmarshal(reply, &rec); err != nil || strings.Join(rec.Groups, ",") != "g2,g3" {
		t.Fatalf("group.add g3,g3,g2 = %s", reply)
	}
	waitFor(t, "index sees the change", 10*time.Second, func() bool { return len(b.idx.group("g1", nil)) == 0 })
	e.publish(e.names.Group("g1"), []byte("to g1"))
	e.publish(e.names.Send(subjects.Token("dup")), []byte("direct"))
	waitFor(t, "the direct send", 20*time.Second, func() bool { return len(e.tg.of("dup")) >= 1 })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	for _, p := range e.tg.of("dup") {
		if p.Data == "to g1" {
			t.Error("the connection still receives g1 after group.remove")
		}
	}
}

// Item 7: group.add of 60,000 groups was accepted and took seconds, with
// every other API request waiting behind it.
func TestGroupAddBounded(t *testing.T) {
	e := newEnv(t, nil)
	e.register("many", "other")
	b := e.start(nil)
	groups := func(n int, prefix string) []string {
		g := make([]string, n)
		for i := range g {
			g[i] = fmt.Sprintf("%s%d", prefix, i)
		}
		return g
	}
	req := func(gs []string) []byte {
		data, _ := json.Marshal(subjects.GroupRequest{Token: subjects.Token("many"), Groups: gs})
		return data
	}
	// 60,000 groups: refused, while a concurrent conn.get is answered.
	type result struct{ errText string }
	big := make(chan result, 1)
	go func() {
		m, err := e.nc.Request(e.names.GroupAdd(), req(groups(60000, "g")), 30*time.Second)
		if err != nil {
			big <- result{"request: " + err.Error()}
			return
		}
		var ae subjects.APIError
		_ = json.Unmarshal(m.Data, &ae)
		big <- result{ae.Error}
	}()
	if _, errText := e.apiReq(e.names.ConnGet(), []byte(`{"token":"`+subjects.Token("other")+`"}`)); errText != "" {
		t.Errorf("conn.get beside a large group.add: %q", errText)
	}
	// Its 529 KB are past the API's request size: refused unread.
	if r := <-big; !strings.Contains(r.errText, "request too large") {
		t.Errorf("group.add of 60,000 groups: %q, want request too large", r.errText)
	}
	// 2,000 groups fit in a request: read, and refused for their number.
	if _, errText := e.apiReq(e.names.GroupAdd(), req(groups(2000, "g"))); !strings.Contains(errText, "too many groups") {
		t.Errorf("group.add of 2,000 groups: %q, want too many groups", errText)
	}
	// At the limit: accepted; one more: refused, the record unchanged.
	if _, errText := e.apiReq(e.names.GroupAdd(), req(groups(subjects.MaxGroups, "a"))); errText != "" {
		t.Fatalf("group.add of %d groups: %q", subjects.MaxGroups, errText)
	}
	if _, errText := e.apiReq(e.names.GroupAdd(), req([]string{"one-more"})); !strings.Contains(errText, "too many groups") {
		t.Errorf("group.add past the limit: %q", errText)
	}
	reply, _ := e.apiReq(e.names.ConnGet(), []byte(`{"token":"`+subjects.Token("many")+`"}`))
	var rec subjects.ConnectEvent
	if err := json.Unmarshal(reply, &rec); err != nil || len(rec.Groups) != subjects.MaxGroups {
		t.Errorf("record has %d groups, want %d", len(rec.Groups), subjects.MaxGroups)
	}
	e.alive(b, "other")
}

// A Ws-Exclude past its limit is dead-lettered, not parsed.
func TestExcludeLimit(t *testing.T) {
	e := newEnv(t, nil)
	e.register("x")
	dlq := e.collect(e.names.DeadLetters())
	e.start(nil)
	atLimit := strings.Repeat("a", subjects.MaxExcludeLen)
	e.publish(e.names.Broadcast(), []byte("at"), subjects.HeaderExclude, atLimit)
	waitFor(t, "broadcast at the limit", 20*time.Second, func() bool { return len(e.tg.of("x")) == 1 })
	e.publish(e.names.Broadcast(), []byte("past"), subjects.HeaderExclude, atLimit+",b")
	waitFor(t, "the dead letter", 20*time.Second, func() bool { return dlq.bySubject(e.names.DeadLetter(subjects.KindBroadcast, "")) != nil })
	if m := dlq.bySubject(e.names.DeadLetter(subjects.KindBroadcast, "")); m.Header.Get(subjects.HeaderReason) != "invalid" {
		t.Errorf("dead letter headers %v", m.Header)
	}
	if got := e.tg.of("x"); len(got) != 1 {
		t.Errorf("pushes %v, want only the one at the limit", got)
	}
}

// Item 1, the supervisor's side: a connection closed for good makes Run
// return an error (the process exits non-zero) and /healthz answer 503.
func TestNATSClosedEndsRun(t *testing.T) {
	e := newEnv(t, nil)
	nc := connect(t, e.s)
	b, err := New(Options{PushURL: e.tg.srv.URL}, Deps{Conn: nc, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background()) }()
	waitFor(t, "bridge ready", 20*time.Second, func() bool { return b.Ready() == nil })
	h := b.Handler()
	get := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code
	}
	if code := get(); code != http.StatusOK {
		t.Fatalf("/healthz = %d before", code)
	}
	nc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNATSClosed) {
			t.Errorf("Run = %v, want ErrNATSClosed", err)
		}
	case <-time.After(30 * time.Second):
		var stacks strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
		t.Fatalf("Run did not return after the connection closed; goroutines:\n%s", stacks.String())
	}
	if code := get(); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz = %d after the connection closed, want 503", code)
	}
}

// Item 10, the bridge's half: a close is announced once, as "closed", and
// the record says so before the gateway (and its cleanup function) hear of
// the close.
func TestCloseMarkedBeforePushAndAnnouncedOnce(t *testing.T) {
	var e *env
	var marked atomic.Value
	e = newEnv(t, func(p push, _ int) (int, int) {
		if p.Action == subjects.ActionClosing {
			kv, err := e.js.KeyValue(context.Background(), e.names.Bucket())
			if err == nil {
				if ent, err := kv.Get(context.Background(), subjects.Token(p.ConnID)); err == nil {
					var rec subjects.ConnectEvent
					_ = json.Unmarshal(ent.Value(), &rec)
					marked.Store(rec.Closing)
				}
			}
		}
		return http.StatusOK, 0
	})
	e.register("bye")
	e.start(nil)
	tok := subjects.Token("bye")
	e.publish(e.names.Close(tok), nil)
	e.publish(e.names.Close(tok), nil) // a second close of the same connection
	waitFor(t, "every command resolved", 20*time.Second, e.resolved)
	if got, _ := marked.Load().(string); got != subjects.ReasonClosed {
		t.Errorf("record at the close push: closing = %q, want %q", got, subjects.ReasonClosed)
	}
	st, err := e.js.Stream(context.Background(), e.names.StreamIn())
	if err != nil {
		t.Fatal(err)
	}
	stored := func() uint64 {
		info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(e.names.Disconnect(tok)))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[e.names.Disconnect(tok)]
	}
	// No cleanup function here: the bridge announces it after endGrace.
	waitFor(t, "the disconnect event", endGrace+20*time.Second, func() bool { return stored() > 0 })
	time.Sleep(100 * time.Millisecond)
	if n := stored(); n != 1 {
		t.Errorf("%d disconnect events stored, want 1", n)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), e.names.Disconnect(tok))
	if err != nil {
		t.Fatal(err)
	}
	var ev subjects.DisconnectEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Reason != subjects.ReasonClosed || m.Header.Get(subjects.HeaderMsgID) != subjects.DisconnectMsgID(tok) {
		t.Errorf("disconnect %s headers %v", m.Data, m.Header)
	}
}

// A registry key that is not a connection token (written to the bucket by
// something else than wsbridge) is not indexed: a broadcast would otherwise
// build a dead-letter subject from it.
func TestAttackRegistryKeyNotAToken(t *testing.T) {
	e := newEnv(t, nil)
	e.register("victim")
	kv, err := e.js.KeyValue(context.Background(), e.names.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("A", 4000)
	if _, err := kv.Put(context.Background(), long, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	b := e.start(nil)
	if b.idx.size() != 1 {
		t.Errorf("index holds %d connections, want only the valid one", b.idx.size())
	}
	e.publish(e.names.Broadcast(), []byte("to all"))
	waitFor(t, "the broadcast", 20*time.Second, func() bool { return len(e.tg.of("victim")) == 1 })
	e.alive(b, "victim")
}

// A partition found full while the bridge held bytes, and paused only after
// the last of them were released, resumes at once: no release comes again
// to resume it (a chaos run had three partitions of one bridge stay paused,
// holding nothing, until the end).
func TestPauseAfterTheLastRelease(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(nil)
	p := newPart(b, b.opts.Partitions) // beside the bridge's own: not one a release looks at
	before := b.pausedParts.Load()
	const size = 1 << 20
	b.hold(size)
	if !p.full(1, b.share(), size) {
		t.Fatal("a partition is not full while the bridge holds its whole budget")
	}
	b.release(size) // the last release, before the reader pauses the partition
	p.pause()
	if p.paused.Load() {
		t.Error("the partition stays paused with nothing held: no release will resume it")
	}
	if got := b.pausedParts.Load(); got != before {
		t.Errorf("paused partitions %d, want %d", got, before)
	}
	// Paused while something is held, it waits for the release.
	b.hold(size)
	p.pause()
	if !p.paused.Load() {
		t.Error("paused while the bridge holds bytes, the partition resumed at once")
	}
	b.release(size)
	if p.resume(); p.paused.Load() {
		t.Error("the partition did not resume once the bridge held nothing")
	}
}
