package subjects_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestPartitionGolden pins the partition function: changing it would move
// connections between partitions of a stream that holds their messages.
func TestPartitionGolden(t *testing.T) {
	tests := []struct {
		token          string
		p32, p7, p1024 int
	}{
		{"", 5, 2, 453},
		{"a", 12, 5, 300},
		{"k0", 14, 1, 814},
		{"k1", 1, 6, 193},
		{"dGVzdA", 27, 1, 1019},
		{"Zm9vYmFyMTIz", 30, 4, 478},
		{"group-1", 6, 2, 230},
		{"L0xxKzEvPT0", 1, 1, 65},
	}
	for _, tt := range tests {
		got := []int{subjects.Partition(tt.token, 32), subjects.Partition(tt.token, 7), subjects.Partition(tt.token, 1024)}
		want := []int{tt.p32, tt.p7, tt.p1024}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("Partition(%q) = %v, want %v", tt.token, got, want)
				break
			}
		}
	}
	if got := subjects.Partition("anything", 1); got != 0 {
		t.Errorf("Partition with one partition = %d, want 0", got)
	}
}

// TestPartitionedStream checks the layout against a real server: the stream
// stores a command in the partition Partition computes, publishers' subjects
// are unchanged, and everything, malformed subjects too, is in the log every
// bridge reads.
func TestPartitionedStream(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := subjects.MustNew("ws")
	const parts = 4
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{Partitions: parts}); err != nil {
		t.Fatal(err)
	}
	var tokens []string
	for i := 0; i < 40; i++ {
		tokens = append(tokens, subjects.Token("conn-"+strconv.Itoa(i)))
	}
	for _, tok := range tokens {
		if _, err := js.Publish(ctx, n.Send(tok), []byte(tok)); err != nil {
			t.Fatal(err)
		}
	}
	extra := []string{n.Broadcast(), n.Group("g1"), n.User("u1"), n.Close(tokens[0]), "ws.out.bogus", "ws.out.send.a.b.c"}
	for _, subj := range extra {
		if _, err := js.Publish(ctx, subj, []byte("x")); err != nil {
			t.Fatalf("publish %s: %v", subj, err)
		}
	}
	// A forged stored form is not captured.
	if _, err := js.Publish(ctx, "ws.out.send.1."+tokens[0], []byte("forged")); err == nil {
		t.Errorf("publish of a stored-form subject was accepted, want no stream")
	}
	st, err := js.Stream(ctx, n.StreamOut())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(len(tokens) + len(extra)); info.State.Msgs != want {
		t.Fatalf("stream holds %d messages, want %d (an uninteresting subject was dropped?)", info.State.Msgs, want)
	}
	// The whole log, in stream order: what every bridge reads.
	oc, err := js.OrderedConsumer(ctx, n.StreamOut(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := oc.Fetch(int(info.State.Msgs), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	perPart := make([]int, parts)
	for m := range batch.Messages() {
		st, err := n.ParseStored(m.Subject())
		seen[st.Original]++
		switch {
		case err != nil:
			if m.Subject() != "ws.out.bogus" && m.Subject() != "ws.out.send.a.b.c" {
				t.Errorf("%s is malformed: %v", m.Subject(), err)
			}
		case st.Kind == subjects.KindSend || st.Kind == subjects.KindClose:
			if want := subjects.Partition(st.Token, parts); st.Partition != want {
				t.Errorf("%s: stored partition %d, Partition says %d", m.Subject(), st.Partition, want)
			}
			if st.Kind == subjects.KindSend && string(m.Data()) != st.Token {
				t.Errorf("%s carries %q", m.Subject(), m.Data())
			}
			perPart[st.Partition]++
		case st.Kind == subjects.KindGroup || st.Kind == subjects.KindUser:
			if want := subjects.Partition(st.Name, parts); st.Partition != want {
				t.Errorf("%s: stored partition %d, Partition says %d", m.Subject(), st.Partition, want)
			}
		}
	}
	for _, subj := range append([]string{n.Broadcast(), n.Group("g1"), n.User("u1"), "ws.out.bogus", "ws.out.send.a.b.c"}, func() []string {
		var out []string
		for _, tok := range tokens {
			out = append(out, n.Send(tok))
		}
		return out
	}()...) {
		if seen[subj] != 1 {
			t.Errorf("%s stored %d times, want once", subj, seen[subj])
		}
	}
	// PartitionSubjects: a partition's sends and closes, every fan-out and
	// the one-token malformed subject.
	for p := 0; p < parts; p++ {
		c, err := js.CreateConsumer(ctx, n.StreamOut(), jetstream.ConsumerConfig{FilterSubjects: n.PartitionSubjects(p), AckPolicy: jetstream.AckNonePolicy})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := c.CachedInfo().NumPending, uint64(perPart[p]+4); got != want {
			t.Errorf("partition %d: its subjects match %d commands, want %d (%d direct, 3 fan-outs, the malformed one-token one)", p, got, want, perPart[p])
		}
	}
}

func TestParseStored(t *testing.T) {
	n := subjects.MustNew("ws")
	tests := []struct {
		subj, orig string
		kind       subjects.Kind
		part       int
		wantErr    bool
	}{
		{"ws.out.send.3.YWJj", "ws.out.send.YWJj", subjects.KindSend, 3, false},
		{"ws.out.close.0.YWJj", "ws.out.close.YWJj", subjects.KindClose, 0, false},
		{"ws.out.group.7.g1", "ws.out.group.g1", subjects.KindGroup, 7, false},
		{"ws.out.broadcast", "ws.out.broadcast", subjects.KindBroadcast, -1, false},
		{"ws.out.send.x.YWJj", "ws.out.send.YWJj", "", -1, true},
		{"ws.out.send.03.YWJj", "ws.out.send.YWJj", "", -1, true},
		{"ws.out.bogus.1.x", "ws.out.bogus.x", "", 1, true},
		{"ws.out.send.a.b.c", "ws.out.send.a.b.c", "", -1, true},
		{"ws.in.message.YWJj", "ws.in.message.YWJj", "", -1, true},
	}
	for _, tt := range tests {
		st, err := n.ParseStored(tt.subj)
		if (err != nil) != tt.wantErr || st.Original != tt.orig || st.Partition != tt.part || st.Kind != tt.kind {
			t.Errorf("ParseStored(%q) = %+v, %v; want original %q kind %q partition %d error %v",
				tt.subj, st, err, tt.orig, tt.kind, tt.part, tt.wantErr)
		}
		if err != nil && !errors.Is(err, subjects.ErrBadSubject) {
			t.Errorf("ParseStored(%q) error %v is not ErrBadSubject", tt.subj, err)
		}
	}
}

// TestProvisionConverts checks the upgrade path: an empty outbound stream of
// an earlier layout, or a log whose partitions resolved everything, is
// replaced (with its positions); one holding messages to deliver is refused
// with how to migrate, and keeps its messages.
func TestProvisionConverts(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := subjects.MustNew("ws")
	old := jetstream.StreamConfig{Name: n.StreamOut(), Subjects: []string{n.Outbound()}, Retention: jetstream.WorkQueuePolicy}
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, n.Send("YWJj"), []byte("held")); err != nil {
		t.Fatal(err)
	}
	err := subjects.Provision(ctx, js, n, subjects.StreamOptions{})
	if !errors.Is(err, subjects.ErrOldLayout) {
		t.Fatalf("Provision over a non-empty work queue: %v, want ErrOldLayout", err)
	}
	t.Logf("refusal: %v", err)
	st, _ := js.Stream(ctx, n.StreamOut())
	if info, _ := st.Info(ctx); info.State.Msgs != 1 || info.Config.Retention != jetstream.WorkQueuePolicy {
		t.Fatalf("refused stream changed: %d messages, retention %v", info.State.Msgs, info.Config.Retention)
	}
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{Partitions: 8}); err != nil {
		t.Fatalf("Provision over an empty work queue: %v", err)
	}
	st, _ = js.Stream(ctx, n.StreamOut())
	info, _ := st.Info(ctx)
	if info.Config.Retention != jetstream.LimitsPolicy || info.Config.Discard != jetstream.DiscardNew || n.OutPartitions(info.Config) != 8 {
		t.Fatalf("converted stream: retention %v, discard %v, %d partitions", info.Config.Retention, info.Config.Discard, n.OutPartitions(info.Config))
	}
	if _, err := js.Publish(ctx, n.Send("YWJj"), []byte("held")); err != nil {
		t.Fatal(err)
	}
	err = subjects.Provision(ctx, js, n, subjects.StreamOptions{Partitions: 16})
	if !errors.Is(err, subjects.ErrPartitionsChanged) {
		t.Fatalf("Provision with another count over messages: %v, want ErrPartitionsChanged", err)
	}
	t.Logf("refusal: %v", err)
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{Partitions: 8}); err != nil {
		t.Fatalf("Provision with the same count: %v", err)
	}
	// Once every partition resolved what the log holds (it keeps it for
	// the replay window), the count may change.
	st, _ = js.Stream(ctx, n.StreamOut())
	info, _ = st.Info(ctx)
	pkv, err := js.KeyValue(ctx, n.Positions())
	if err != nil {
		t.Fatal(err)
	}
	for p := 0; p < 8; p++ {
		pos := subjects.Position{Next: info.State.LastSeq + 1, Stream: info.Created}
		if _, err := pkv.Put(ctx, subjects.PositionKey(p), pos.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{Partitions: 16}); err != nil {
		t.Fatalf("Provision with another count over a resolved log: %v", err)
	}
	if _, err := js.KeyValue(ctx, n.Positions()); err != nil {
		t.Fatalf("positions bucket after the conversion: %v", err)
	} else if keys, _ := pkv.ListKeys(ctx); keys != nil {
		for k := range keys.Keys() {
			t.Errorf("position %s of the replaced stream kept", k)
		}
	}
	// The interest stream of the previous release, holding messages.
	if err := js.DeleteStream(ctx, n.StreamOut()); err != nil {
		t.Fatal(err)
	}
	interest := jetstream.StreamConfig{Name: n.StreamOut(), Subjects: n.OutSubjects(), Retention: jetstream.InterestPolicy, SubjectTransform: n.OutTransform(8)}
	if _, err := js.CreateStream(ctx, interest); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateConsumer(ctx, n.StreamOut(), jetstream.ConsumerConfig{Durable: "WS_BRIDGE_0", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, n.Send("YWJj"), []byte("held")); err != nil {
		t.Fatal(err)
	}
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{Partitions: 8}); !errors.Is(err, subjects.ErrOldLayout) {
		t.Fatalf("Provision over the previous release's stream with a message: %v, want ErrOldLayout", err)
	} else {
		t.Logf("refusal: %v", err)
	}
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{Partitions: subjects.MaxPartitions + 1}); err == nil {
		t.Errorf("Provision past MaxPartitions accepted")
	}
	// At the limit, on another prefix: accepted.
	big := subjects.MustNew("big")
	if err := subjects.Provision(ctx, js, big, subjects.StreamOptions{Partitions: subjects.MaxPartitions}); err != nil {
		t.Errorf("Provision at MaxPartitions: %v", err)
	}
}

func TestLeasesBucketKeys(t *testing.T) {
	if p, ok := subjects.LeaseKeyPartition(subjects.LeaseKey(17)); !ok || p != 17 {
		t.Errorf("lease key of 17 read back as %d, %v", p, ok)
	}
	if id, ok := subjects.MemberKeyID(subjects.MemberKey("vm-1-abc")); !ok || id != "vm-1-abc" {
		t.Errorf("member key read back as %q, %v", id, ok)
	}
	for _, k := range []string{subjects.MemberKey("7"), "p.", "p.x", "p.-1", "7"} {
		if p, ok := subjects.LeaseKeyPartition(k); ok {
			t.Errorf("%q read as the lease of partition %d", k, p)
		}
	}
	if _, ok := subjects.MemberKeyID(subjects.LeaseKey(3)); ok {
		t.Errorf("a lease key read as a member key")
	}
}
