package subjects

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// One disconnect event per connection, with the true reason.
//
// The rule: whoever deletes a connection's registry record announces its
// disconnect, and nobody else. Forget is the one way to do both: it deletes
// the record on the condition that it is the revision just read, so of
// several components that see the same end at once (the cleanup function
// the gateway runs, the bridge that pushed a close or got "gone", the
// self-hosted edge shutting down) exactly one succeeds and publishes. A
// record already gone means the disconnect was announced. The reason is the
// caller's, unless the record carries a Closing mark: the bridge writes it
// before it pushes a close a backend asked for, so the cleanup function that
// the gateway runs next (possibly before the bridge hears back) reports
// "closed" too. Every disconnect event also carries Nats-Msg-Id
// disconnect-<token>, so WS_IN keeps one even when a record expires and
// several bridges announce "expired".

// DisconnectMsgID is the Nats-Msg-Id of every disconnect event of token.
func DisconnectMsgID(token string) string { return "disconnect-" + token }

// DisconnectMsg builds the disconnect event of a connection token, with its
// Ws-Connection-Id and Nats-Msg-Id (DisconnectMsgID) headers.
func (n Names) DisconnectMsg(token, reason string, at time.Time) (*nats.Msg, error) {
	id, err := ConnID(token)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(DisconnectEvent{ConnectionID: id, Token: token, At: at.UTC(), Reason: reason})
	if err != nil {
		return nil, err
	}
	m := &nats.Msg{Subject: n.Disconnect(token), Data: data, Header: nats.Header{}}
	m.Header.Set(HeaderConnID, id)
	m.Header.Set(HeaderMsgID, DisconnectMsgID(token))
	return m, nil
}

// PublishDisconnect publishes token's disconnect event (DisconnectMsg).
// Forget is the way to announce a connection's end; this is for an end
// whose record is already gone (it aged out of the registry).
func (n Names) PublishDisconnect(ctx context.Context, js jetstream.JetStream, token, reason string, at time.Time) error {
	m, err := n.DisconnectMsg(token, reason, at)
	if err != nil {
		return err
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish %s: %w", m.Subject, err)
	}
	return nil
}

// maxForgetTries bounds the read-delete rounds of Forget when writers race.
const maxForgetTries = 5

// Forget announces the end of token's connection: it publishes the
// connection's disconnect event with reason (or the reason of the record's
// Closing mark), then deletes its registry record. It reports the reason
// announced, "" when the record was already gone (its end was announced).
//
// The event is stored before the record is deleted, so a record that is
// gone always had its event stored: an attempt cut short (a publish that
// failed, a process killed) leaves the record for a retry or for the sweep
// of a vanished instance, never a deleted record without an event. A retry
// after a publish that was stored but not acknowledged, or two components
// ending the same connection at once, publish again under the same
// Nats-Msg-Id (DisconnectMsgID): WS_IN keeps one event.
func (n Names) Forget(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, token, reason string, now time.Time) (string, error) {
	return n.forget(ctx, js, kv, token, reason, now, true)
}

// ForgetSwept is Forget for the connection of another instance that
// vanished, announced lost by a survivor's sweep: the record is deleted
// first, then the event published. The instance may only have been cut
// off and come back; finding its connection's record deleted, it closes
// the connection, where an event stored first would have announced lost a
// connection that lives on. A publish that fails after the delete is
// returned: the caller retries by looking for the event in WS_IN.
func (n Names) ForgetSwept(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, token, reason string, now time.Time) (string, error) {
	return n.forget(ctx, js, kv, token, reason, now, false)
}

// forget is Forget (eventFirst) and ForgetSwept (the record first).
func (n Names) forget(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, token, reason string, now time.Time, eventFirst bool) (string, error) {
	if _, err := ConnID(token); err != nil {
		return "", err
	}
	for try := 0; try < maxForgetTries; try++ {
		e, err := kv.Get(ctx, token)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("registry get %s: %w", token, err)
		}
		announced := reason
		if mark := closingMark(e.Value()); mark != "" {
			announced = mark
		}
		if eventFirst {
			if err := n.PublishDisconnect(ctx, js, token, announced, now); err != nil {
				return "", err
			}
		}
		if err := kv.Delete(ctx, token, jetstream.LastRevision(e.Revision())); err != nil {
			if IsWrongLastSequence(err) {
				continue // changed meanwhile (or deleted by another end): read again
			}
			return "", fmt.Errorf("registry delete %s: %w", token, err)
		}
		if !eventFirst {
			if err := n.PublishDisconnect(ctx, js, token, announced, now); err != nil {
				return "", err
			}
		}
		return announced, nil
	}
	return "", fmt.Errorf("registry delete %s: too many concurrent writers", token)
}

// closingMark returns a record's Closing mark, "" when it has none (or is
// not a record).
func closingMark(value []byte) string {
	var rec struct {
		Closing string `json:"closing"`
	}
	if json.Unmarshal(value, &rec) != nil || len(rec.Closing) > 32 {
		return ""
	}
	return rec.Closing
}

// IsWrongLastSequence reports a write conditional on a revision (or last
// sequence) that lost: the key or subject changed since.
func IsWrongLastSequence(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	// 10164 is what a replicated stream answers where a single replica
	// answers 10071.
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
