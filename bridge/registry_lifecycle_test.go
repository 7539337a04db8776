package bridge

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// Tests of a registry record's end: which disconnect the bridge announces
// (expired, gone), once, and how a record in use is kept.

// A deleted record's delete marker ages out after the TTL and the
// server replaces it with a MaxAge marker (a purge to the watcher); that
// connection already left and must not be announced as expired.
func TestDeleteMarkerAgeOutNotAnnouncedExpired(t *testing.T) {
	e := newEnv(t, nil)
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	const ttl = time.Second
	e.start(func(o *Options) { o.Streams.RegistryTTL = ttl })
	left, stays := "left-conn==", "stays-conn=="
	e.register(left)
	deleted := time.Now()
	if err := e.kv().Delete(context.Background(), subjects.Token(left)); err != nil {
		t.Fatal(err)
	}
	// Registered after the delete: its record ages out after the delete
	// marker, so its expired event (positive control) comes after any the
	// deleted one would get.
	e.register(stays)
	waitFor(t, "the control's expired disconnect", 30*time.Second, func() bool {
		return len(e.disconnectsOf(disc, subjects.Token(stays))) > 0
	})
	if d := 2*ttl + 500*time.Millisecond - time.Since(deleted); d > 0 {
		time.Sleep(d) // more than two TTLs after the delete, whatever the server's timer
	}
	e.flushCollector(disc)
	if got := e.disconnectsOf(disc, subjects.Token(stays)); len(got) != 1 || got[0] != subjects.ReasonExpired {
		t.Errorf("control connection: disconnects %v, want [expired]", got)
	}
	if got := e.disconnectsOf(disc, subjects.Token(left)); len(got) != 0 {
		t.Errorf("deleted connection: disconnects %v, want none", got)
	}
}

// Several messages queued for a connection the gateway reports gone
// are each dead-lettered, but the connection is announced gone once, and
// pushed to once: the rest of its backlog is dead-lettered without a push.
func TestGoneAnnouncedOncePerConnection(t *testing.T) {
	var pushed atomic.Int32
	e := newEnv(t, func(p push, attempt int) (int, int) {
		if p.ConnID == "gone-many" {
			pushed.Add(1)
			return http.StatusNotFound, 404
		}
		return http.StatusOK, 0
	})
	tok := subjects.Token("gone-many")
	e.register("gone-many")
	dlq := e.collect(e.names.DeadLetters())
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	for i := 0; i < 5; i++ {
		e.publish(e.names.Send(tok), []byte("queued"))
	}
	e.start(nil)
	waitFor(t, "five dead letters", 20*time.Second, func() bool { return dlq.len() >= 5 })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	// No cleanup here: the bridge announces the end after endGrace.
	waitFor(t, "the disconnect event", endGrace+20*time.Second, func() bool { return len(e.disconnectsOf(disc, tok)) > 0 })
	e.flushCollector(disc)
	if n := dlq.len(); n != 5 {
		t.Errorf("%d dead letters, want 5", n)
	}
	if n := pushed.Load(); n != 1 {
		t.Errorf("the gone connection was pushed to %d times, want once", n)
	}
	again := 0
	for _, m := range dlq.all() {
		if r := m.Header.Get(subjects.HeaderReason); r != "gone" {
			t.Errorf("dead letter reason %q, want gone", r)
		}
		if strings.Contains(m.Header.Get(subjects.HeaderError), "not pushed again") {
			again++
		}
	}
	if again != 4 {
		t.Errorf("%d dead letters say the connection was not pushed again, want 4", again)
	}
	if got := e.disconnectsOf(disc, tok); len(got) != 1 || got[0] != subjects.ReasonGone {
		t.Errorf("disconnects %v, want exactly one gone", got)
	}
	e.waitRecordGone(t, tok, "the gone connection")
}

// A connection that keeps receiving pushes stays registered past
// the TTL; one that receives nothing expires.
func TestActiveConnectionRefreshed(t *testing.T) {
	e := newEnv(t, nil)
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	const ttl = 2 * time.Second
	b := e.start(func(o *Options) { o.Streams.RegistryTTL = ttl })
	active, idle := "active-conn", "idle-conn"
	e.register(active, idle)
	waitFor(t, "both indexed", 10*time.Second, func() bool { return b.idx.size() == 2 })
	begin := time.Now()
	for time.Since(begin) < 3*ttl+time.Second {
		e.publish(e.names.Send(subjects.Token(active)), []byte("tick"))
		time.Sleep(300 * time.Millisecond)
	}
	waitFor(t, "the idle connection's expired disconnect", 30*time.Second, func() bool {
		return len(e.disconnectsOf(disc, subjects.Token(idle))) > 0
	})
	e.publish(e.names.Broadcast(), []byte("still there?"))
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	e.flushCollector(disc)
	var got int
	for _, p := range e.tg.of(active) {
		if p.Data == "still there?" {
			got++
		}
	}
	if got != 1 {
		t.Errorf("broadcast reached the active connection %d times, want 1", got)
	}
	if d := e.disconnectsOf(disc, subjects.Token(active)); len(d) != 0 {
		t.Errorf("active connection: disconnects %v, want none", d)
	}
	if !e.kvHas(subjects.Token(active)) {
		t.Error("active connection's record expired")
	}
	for _, p := range e.tg.of(idle) {
		t.Errorf("idle connection got %+v after expiring", p)
	}
}

// A connection's own cleanup that comes after a push found it gone, within
// endGrace, announces its end, with its reason: the bridge, finding the
// record gone after the grace, announces nothing. A plain subscriber sees
// one event (WS_IN would keep one anyway, but ws.in.> subscribers see every
// publish).
func TestCleanupWithinGraceAnnouncesTheEnd(t *testing.T) {
	var pushed atomic.Int64
	e := newEnv(t, func(p push, _ int) (int, int) {
		pushed.Add(1)
		return http.StatusNotFound, 0
	})
	tok := subjects.Token("closing-now")
	e.register("closing-now")
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	e.start(nil)
	e.publish(e.names.Send(tok), []byte("too late"))
	waitFor(t, "the push answered gone", 20*time.Second, func() bool { return pushed.Load() > 0 })
	time.Sleep(endGrace / 3)
	// The cleanup function, a moment later.
	if _, err := e.names.Forget(context.Background(), e.js, e.kv(), tok, subjects.ReasonClient, time.Now()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(endGrace + time.Second)
	e.flushCollector(disc)
	if got := e.disconnectsOf(disc, tok); len(got) != 1 || got[0] != subjects.ReasonClient {
		t.Errorf("disconnect events %v, want one, the cleanup's (client)", got)
	}
}
