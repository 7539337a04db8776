package subjects_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// A conditional write that lost is reported with err_code 10071 by a
// stream of one replica and 10164 by a replicated one (a KV delete on an R3
// registry): both mean "changed since", so Forget reads again instead of
// failing.
func TestIsWrongLastSequence(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence: 7"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant, Description: "wrong last sequence"}, true},
		{fmt.Errorf("registry delete: %w", &jetstream.APIError{Code: 400, ErrorCode: 10164}), true},
		{&jetstream.APIError{Code: 503, ErrorCode: jetstream.JSErrCodeJetStreamNotEnabled}, false},
		{context.DeadlineExceeded, false},
		{nil, false},
	} {
		if got := subjects.IsWrongLastSequence(c.err); got != c.want {
			t.Errorf("IsWrongLastSequence(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// A retried end: Forget again after an attempt that was applied (its
// answer lost) finds the record gone and announces nothing, and a
// disconnect event published again for the same connection (by an end
// that found the record gone and no event yet, racing the first) is kept
// once by WS_IN's duplicate window. One event per connection.
func TestForgetRetried(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	n := subjects.MustNew(subjects.DefaultPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, n.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	token := subjects.Token("edge-a~Zm9yZ2V0IG1lIG5vdA==")
	if _, err := kv.Put(ctx, token, []byte(`{"connectionId":"edge-a~Zm9yZ2V0IG1lIG5vdA=="}`)); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	got, err := n.Forget(ctx, js, kv, token, subjects.ReasonClient, at)
	if err != nil || got != subjects.ReasonClient {
		t.Fatalf("Forget: %q, %v; want client", got, err)
	}
	again, err := n.Forget(ctx, js, kv, token, subjects.ReasonClient, at)
	if err != nil || again != "" {
		t.Fatalf("Forget retried: %q, %v; want nothing announced", again, err)
	}
	if err := n.PublishDisconnect(ctx, js, token, subjects.ReasonClient, at); err != nil {
		t.Fatalf("disconnect event published again: %v", err)
	}
	st, err := js.Stream(ctx, n.StreamIn())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(n.Disconnect(token)))
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Subjects[n.Disconnect(token)]; got != 1 || info.State.Msgs != 1 {
		t.Fatalf("%d disconnect events stored for one connection (%d messages in %s), want 1", got, info.State.Msgs, n.StreamIn())
	}
	m, err := st.GetLastMsgForSubject(ctx, n.Disconnect(token))
	if err != nil {
		t.Fatal(err)
	}
	var ev subjects.DisconnectEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Reason != subjects.ReasonClient {
		t.Fatalf("disconnect event %s: %v", m.Data, err)
	}
	if _, err := kv.Get(ctx, token); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("registry record after Forget: %v", err)
	}
}
