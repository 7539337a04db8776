package subjects_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// An end whose disconnect event cannot be stored leaves the registry
// record, so that a retry (or the sweep of a vanished instance) announces
// it later; a record deleted with no event stored would be an end nobody
// announces. An event stored whose acknowledgement was lost, published
// again by the retry, is kept once.
func TestForgetKeepsTheRecordUntilTheEventIsStored(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := subjects.MustNew("")
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, n.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	tok := subjects.Token("conn-1")
	if _, err := kv.Put(ctx, tok, []byte(`{"connectionId":"conn-1"}`)); err != nil {
		t.Fatal(err)
	}

	// WS_IN gone: the event cannot be stored.
	if err := js.DeleteStream(ctx, n.StreamIn()); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Forget(ctx, js, kv, tok, subjects.ReasonClient, time.Now()); err == nil {
		t.Fatal("Forget succeeded with no stream to store the event in")
	}
	if _, err := kv.Get(ctx, tok); err != nil {
		t.Fatalf("the record went with the event not stored: %v", err)
	}

	// Back, with the event stored once already (an acknowledgement lost).
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := n.PublishDisconnect(ctx, js, tok, subjects.ReasonClient, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, err := n.Forget(ctx, js, kv, tok, subjects.ReasonClient, time.Now())
	if err != nil || got != subjects.ReasonClient {
		t.Fatalf("Forget = %q, %v; want %q", got, err, subjects.ReasonClient)
	}
	if _, err := kv.Get(ctx, tok); !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
		t.Errorf("record after Forget: %v, want it gone", err)
	}
	if got, err := n.Forget(ctx, js, kv, tok, subjects.ReasonClient, time.Now()); err != nil || got != "" {
		t.Errorf("Forget again = %q, %v; want nothing announced", got, err)
	}
	in, err := js.Stream(ctx, n.StreamIn())
	if err != nil {
		t.Fatal(err)
	}
	info, err := in.Info(ctx, jetstream.WithSubjectFilter(n.Disconnect(tok)))
	if err != nil {
		t.Fatal(err)
	}
	if c := info.State.Subjects[n.Disconnect(tok)]; c != 1 {
		t.Errorf("%d disconnect events stored, want 1", c)
	}
}
