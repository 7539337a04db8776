package bridge

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestRegistryExpiryAnnounced: a registry record that outlives the bucket's
// TTL (its cleanup was lost) leaves the index and is announced once as a
// disconnect with reason "expired".
func TestRegistryExpiryAnnounced(t *testing.T) {
	e := newEnv(t, nil)
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	e.start(func(o *Options) { o.Streams.RegistryTTL = time.Second })
	id := "kGcK4x/+Vf1e7aT3Nd2u1A=="
	tok := subjects.Token(id)
	e.register(id)

	waitFor(t, "the expired disconnect", 30*time.Second, func() bool { return disc.len() > 0 })
	m := disc.all()[0]
	if m.Subject != e.names.Disconnect(tok) {
		t.Fatalf("disconnect on %s, want %s", m.Subject, e.names.Disconnect(tok))
	}
	var ev subjects.DisconnectEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatalf("disconnect body %q: %v", m.Data, err)
	}
	if ev.Reason != subjects.ReasonExpired || ev.Token != tok {
		t.Errorf("disconnect event %+v, want reason %q for %s", ev, subjects.ReasonExpired, tok)
	}
	if e.kvHas(tok) {
		t.Error("expired record still readable")
	}
	// A broadcast now reaches nobody: the index forgot the connection.
	e.publish(e.names.Broadcast(), []byte("anyone?"))
	waitFor(t, "the broadcast to be consumed", 10*time.Second, e.resolved)
	if got := e.tg.delivered(); got != 0 {
		t.Errorf("broadcast after expiry pushed %d times, want 0", got)
	}
	time.Sleep(200 * time.Millisecond)
	if n := disc.len(); n != 1 {
		t.Errorf("%d disconnect events, want exactly 1", n)
	}
}
