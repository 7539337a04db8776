package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// holdRecords writes n registry records naming instance inst, as its
// register function did, and returns their tokens.
func holdRecords(t *testing.T, reg jetstream.KeyValue, inst string, n int) []string {
	t.Helper()
	var tokens []string
	for range n {
		tok := subjects.Token(subjects.NewEdgeConnID(inst))
		if _, err := reg.Put(context.Background(), tok, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	return tokens
}

// advertise writes instance inst's record, as inst does to live.
func advertise(t *testing.T, kv jetstream.KeyValue, inst string) {
	t.Helper()
	if _, err := kv.Put(context.Background(), inst, []byte(`{"id":"`+inst+`","pushUrl":"http://127.0.0.1:1/push"}`)); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits for a log line, bounded by 3 waitTimeouts.
func waitLog(t *testing.T, logs *logBuffer, what string) {
	t.Helper()
	deadline := time.Now().Add(3 * waitTimeout)
	for !logs.has(what) {
		if time.Now().After(deadline) {
			t.Fatalf("the log never said %q", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSweepRetriedUntilComplete: the sweep of a vanished instance's
// connections that NATS interrupts is retried until every connection is
// announced lost, once. (The announcements NATS did not take were logged
// and dropped, those whose record was deleted and whose event was not
// stored included: in a chaos run, a SIGKILLed instance's connections got
// no disconnect event when a NATS node was killed at the same time.)
func TestSweepRetriedUntilComplete(t *testing.T) {
	stallAtDisconnect := func(names subjects.Names) string {
		return "PUB " + strings.TrimSuffix(names.InboundKind(subjects.KindDisconnect), "*")
	}

	t.Run("a survivor's sweep of a dead instance", func(t *testing.T) {
		t.Parallel()
		s := natstest.Start(t)
		_, js, names := provisioned(t, s)
		// NATS stalls at the sweep's first disconnect event, after its
		// registry delete.
		proxy := newStallProxy(t, s.Addr().String(), stallAtDisconnect(names))
		b, _ := serveEdgeAt(t, proxy.url(), "edge-b")
		var inst jetstream.KeyValue
		waitFor(t, "the instances bucket", func() bool {
			var err error
			inst, err = js.KeyValue(context.Background(), names.GatewayBucket())
			return err == nil
		})
		reg, err := js.KeyValue(context.Background(), names.Bucket())
		if err != nil {
			t.Fatal(err)
		}
		// edge-dead advertises itself once, holding 5 connections, and
		// dies (stops refreshing, as a SIGKILLed instance does).
		advertise(t, inst, "edge-dead")
		tokens := holdRecords(t, reg, "edge-dead", 5)
		select {
		case <-proxy.hit:
		case <-time.After(3 * waitTimeout):
			t.Fatal("edge-b never swept edge-dead")
		}
		proxy.cut()
		waitEnds(t, b, js, names, tokens, subjects.ReasonLost)
	})

	t.Run("the instance comes back meanwhile", func(t *testing.T) {
		t.Parallel()
		s := natstest.Start(t)
		_, js, names := provisioned(t, s)
		// NATS stalls at the sweep's first registry delete.
		proxy := newStallProxy(t, s.Addr().String(), "PUB $KV."+names.Bucket()+".")
		b, bLogs := serveEdgeAt(t, proxy.url(), "edge-b")
		var inst jetstream.KeyValue
		waitFor(t, "the instances bucket", func() bool {
			var err error
			inst, err = js.KeyValue(context.Background(), names.GatewayBucket())
			return err == nil
		})
		reg, err := js.KeyValue(context.Background(), names.Bucket())
		if err != nil {
			t.Fatal(err)
		}
		advertise(t, inst, "edge-gone")
		tokens := holdRecords(t, reg, "edge-gone", 4)
		select {
		case <-proxy.hit:
		case <-time.After(3 * waitTimeout):
			t.Fatal("edge-b never swept edge-gone")
		}
		// Every announcement of the sweep fails (their deletes are held).
		// Then one record is deleted with no disconnect event stored (as
		// when a delete is taken and the publish after it is not), and
		// edge-gone, which was only cut off, advertises itself again. The
		// deleted record is announced lost (edge-gone closes that
		// connection when it reconciles); the others are edge-gone's
		// again.
		waitLog(t, bLogs, "connections of vanished instances announced lost")
		if err := reg.Delete(context.Background(), tokens[0]); err != nil {
			t.Fatal(err)
		}
		advertise(t, inst, "edge-gone")
		quit := make(chan struct{})
		refreshed := make(chan struct{})
		go func() {
			defer close(refreshed)
			for {
				select {
				case <-quit:
					return
				case <-time.After(200 * time.Millisecond):
					_, _ = inst.Put(context.Background(), "edge-gone", []byte(`{"id":"edge-gone","pushUrl":"http://127.0.0.1:1/push"}`))
				}
			}
		}()
		defer func() { close(quit); <-refreshed }()
		proxy.cut()
		waitEnds(t, b, js, names, tokens[:1], subjects.ReasonLost)
		events := disconnectEvents(t, js, names)
		for _, tok := range tokens[1:] {
			if _, err := reg.Get(context.Background(), tok); err != nil {
				t.Errorf("connection %s of the instance that came back: registry record %v, want it kept", tok, err)
			}
			if r := events[tok]; len(r) != 0 {
				t.Errorf("connection %s of the instance that came back: disconnect events %q, want none", tok, r)
			}
		}
	})

	t.Run("an earlier life's sweep at start", func(t *testing.T) {
		t.Parallel()
		// An instance restarted under its id announces what its earlier
		// life left; NATS fails the listing of the registry at start. The
		// sweep is tried again once the instance runs, and takes none of
		// this life's connections for the earlier life's.
		s := natstest.Start(t)
		_, js, names := provisioned(t, s)
		reg, err := js.KeyValue(context.Background(), names.Bucket())
		if err != nil {
			t.Fatal(err)
		}
		earlier := holdRecords(t, reg, "edge-x", 3)
		proxy := newStallProxy(t, s.Addr().String(), "CONSUMER.CREATE.KV_"+names.Bucket())
		go func() {
			select {
			case <-proxy.hit:
				proxy.cut()
			case <-time.After(3 * waitTimeout):
			}
		}()
		edge := serveEdgeWithFunctions(t, proxy.url(), "edge-x", nil)
		waitLog(t, edge.logs, "gateway listening")
		if !edge.logs.has("sweep of an earlier life failed") {
			t.Fatal("the sweep at start did not fail: the case is not tested")
		}
		_, mine := dialClients(t, edge.served, 1)
		waitEnds(t, edge.served, js, names, earlier, subjects.ReasonLost)
		if _, err := reg.Get(context.Background(), mine[0]); err != nil {
			t.Errorf("this life's connection: registry record %v, want it kept", err)
		}
		if r := disconnectEvents(t, js, names)[mine[0]]; len(r) != 0 {
			t.Errorf("this life's connection: disconnect events %q, want none", r)
		}
		if ids := edge.g.ConnectionIDs(); len(ids) != 1 || subjects.Token(ids[0]) != mine[0] {
			t.Errorf("this life's connections: %v, want its client still connected", ids)
		}
	})
}
