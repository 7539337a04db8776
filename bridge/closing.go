package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// markClosing records on token's registry record, before the bridge pushes a
// close a backend asked for, that the connection is being closed by the
// backend (ConnectEvent.Closing = "closed"). The gateway closes the client
// and runs the cleanup function, possibly before the bridge announces the
// close; the cleanup function reads the mark and reports the true reason.
// Both announcements carry one Nats-Msg-Id (subjects.DisconnectMsg), so the
// connection gets one disconnect event. Best effort, like every disconnect:
// a failure is logged and the cleanup then reports "client".
func (b *Bridge) markClosing(token string) { b.setClosing(token, subjects.ReasonClosed) }

// unmarkClosing removes the mark of a close that could not be pushed
// (dead-lettered, not gone): the connection lives on, and its end, later,
// is the client's.
func (b *Bridge) unmarkClosing(token string) { b.setClosing(token, "") }

// setClosing writes (or, with "", removes) the Closing mark of token's
// record, keeping every other field as it is.
func (b *Bridge) setClosing(token, reason string) {
	ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
	defer cancel()
	for try := 0; try < 3; try++ {
		e, err := b.kv.Get(ctx, token)
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
				b.log.Warn("registry: close mark not written", "token", token, "err", err)
			}
			return
		}
		var rec map[string]json.RawMessage
		if err := json.Unmarshal(e.Value(), &rec); err != nil || rec == nil {
			return
		}
		if reason == "" {
			if _, marked := rec["closing"]; !marked {
				return
			}
			delete(rec, "closing")
		} else {
			rec["closing"], _ = json.Marshal(reason)
		}
		value, err := json.Marshal(rec)
		if err != nil {
			return
		}
		if _, err := b.kv.Update(ctx, token, value, e.Revision()); err == nil {
			return
		} else if !isConflict(err) {
			b.log.Warn("registry: close mark not written", "token", token, "err", err)
			return
		}
	}
}
