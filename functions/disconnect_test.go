package functions_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// Item 10 of issue 7: a close asked by a backend used to yield two
// disconnect events, "closed" from the bridge and "client" from the cleanup
// function the gateway runs next. Whoever deletes the record announces
// (subjects.Names.Forget); the bridge marks the record before it pushes the
// close, so when the cleanup wins the race the reason is still "closed".
// Counted as a plain subscriber sees them (nats sub 'ws.in.>'), and as
// stored.
func TestCloseByBackendAnnouncedOnceAsClosed(t *testing.T) {
	for _, bridgeFirst := range []bool{true, false} {
		name := "cleanup first"
		if bridgeFirst {
			name = "bridge first"
		}
		t.Run(name, func(t *testing.T) {
			s := startNATS(t)
			obs := observe(t, s, true)
			f := newFunctions(t, s.ClientURL(), nil)
			tok := subjects.Token(connID)
			if out, _ := f.Register(invocation(t, "r0", 5*time.Second), json.RawMessage(connectEvent(connID, ""))); reply(t, out).ErrNo != 0 {
				t.Fatalf("register: %s", out)
			}
			// What the bridge does before pushing the close.
			ctx := context.Background()
			kv, err := obs.js.KeyValue(ctx, obs.names.Bucket())
			if err != nil {
				t.Fatal(err)
			}
			e, err := kv.Get(ctx, tok)
			if err != nil {
				t.Fatal(err)
			}
			var rec map[string]any
			_ = json.Unmarshal(e.Value(), &rec)
			rec["closing"] = subjects.ReasonClosed
			marked, _ := json.Marshal(rec)
			if _, err := kv.Update(ctx, tok, marked, e.Revision()); err != nil {
				t.Fatal(err)
			}
			seen := make(chan *nats.Msg, 10)
			sub, err := obs.nc.ChanSubscribe(obs.names.Disconnect(tok), seen)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			// The subscription must be on the server before anyone announces.
			if err := obs.nc.Flush(); err != nil {
				t.Fatal(err)
			}
			bridgeAnnounces := func() {
				if _, err := obs.names.Forget(ctx, obs.js, kv, tok, subjects.ReasonClosed, time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			if bridgeFirst {
				bridgeAnnounces()
			}
			if _, err := f.Cleanup(invocation(t, "c1", 5*time.Second), json.RawMessage(closingEvent(connID))); err != nil {
				t.Fatal(err)
			}
			if !bridgeFirst {
				bridgeAnnounces()
			}
			var got []subjects.DisconnectEvent
			for _, m := range obs.stored(t) {
				if m.Subject == obs.names.Disconnect(tok) {
					var ev subjects.DisconnectEvent
					_ = json.Unmarshal(m.Data, &ev)
					got = append(got, ev)
				}
			}
			if len(got) != 1 || got[0].Reason != subjects.ReasonClosed {
				t.Errorf("disconnect events %+v, want one with reason closed", got)
			}
			// The announcement travels over the functions' own connection:
			// wait for the first, then give a second one time to show up.
			select {
			case <-seen:
			case <-time.After(5 * time.Second):
				t.Fatal("a subscriber saw no disconnect event, want 1")
			}
			time.Sleep(200 * time.Millisecond)
			if n := len(seen); n != 0 {
				t.Errorf("a subscriber saw %d more disconnect events, want 1 in all", n)
			}
			if obs.record(t, tok) != nil {
				t.Error("the record outlived the cleanup")
			}
		})
	}
}
