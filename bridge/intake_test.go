package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// intakeRun reads partition 0 of a 4-partition stream through an intake and
// records the stream sequences it hands on, acknowledging each.
type intakeRun struct {
	mu   sync.Mutex
	seqs []uint64
	subj map[uint64]string
	// slowFanOut delays the acknowledgement of fan-outs, so that their
	// consumer (at its ack-pending limit) falls behind the direct one.
	slowFanOut time.Duration
}

func (r *intakeRun) deliver(m jetstream.Msg) {
	r.mu.Lock()
	r.seqs = append(r.seqs, streamSeq(m))
	r.subj[streamSeq(m)] = m.Subject()
	r.mu.Unlock()
	if meta, err := m.Metadata(); err == nil && r.slowFanOut > 0 && strings.HasSuffix(meta.Consumer, "_FANOUT") {
		time.AfterFunc(r.slowFanOut, func() { _ = m.Ack() })
		return
	}
	_ = m.Ack()
}

func (r *intakeRun) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seqs)
}

// TestIntakeMergesInStreamOrder publishes direct sends, broadcasts, group
// and user commands at random, first as a backlog and then while the
// intake runs, in bursts: the intake of partition 0 hands on exactly the
// sends stored in partition 0 and every fan-out, each once, in strictly
// increasing stream order, and lets go of the group and user copies stored
// in partition 0.
//
// It runs with probes alone, and with the stream's log followed (the live
// bursts are then merged from the log, the backlog from probes).
func TestIntakeMergesInStreamOrder(t *testing.T) {
	t.Run("probes", func(t *testing.T) { intakeMerge(t, false) })
	t.Run("log", func(t *testing.T) { intakeMerge(t, true) })
}

func intakeMerge(t *testing.T, withLog bool) {
	e := newEnv(t, nil)
	const parts = 4
	ctx := context.Background()
	if err := e.js.DeleteStream(ctx, e.names.StreamOut()); err != nil {
		t.Fatal(err)
	}
	opts := subjects.StreamOptions{Partitions: parts}
	if err := subjects.Provision(ctx, e.js, e.names, opts); err != nil {
		t.Fatal(err)
	}
	// Two fan-outs held at most, acknowledged late (below): the fan-out
	// consumer lags behind the direct one, as a fan-out to many
	// connections would, and direct sends arrive before older fan-outs.
	fcfg := e.names.FanOutConsumerConfig(0, opts)
	fcfg.MaxAckPending = 2
	if _, err := e.js.UpdateConsumer(ctx, e.names.StreamOut(), fcfg); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	want := 0
	publish := func(n int) {
		for i := 0; i < n; i++ {
			var subj string
			switch k := rng.IntN(20); {
			case k == 0:
				subj = e.names.Broadcast()
			case k == 1:
				subj = e.names.Group(fmt.Sprintf("g%d", rng.IntN(8)))
			case k == 2:
				subj = e.names.User(fmt.Sprintf("u%d", rng.IntN(8)))
			default:
				tok := subjects.Token(fmt.Sprintf("c%d", rng.IntN(200)))
				subj = e.names.Send(tok)
				if subjects.Partition(tok, parts) != 0 {
					e.publish(subj, []byte("x"))
					continue
				}
			}
			want++
			e.publish(subj, []byte("x"))
		}
	}
	publish(3000)

	var fanOutClear func(uint64) (uint64, bool)
	var log *outLog
	if withLog {
		var err error
		if log, err = newOutLog(e.nc, e.names); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(log.close)
		fanOutClear = func(from uint64) (uint64, bool) { return log.clearTo(from, 0) }
	}
	run := &intakeRun{subj: map[uint64]string{}, slowFanOut: 5 * time.Millisecond}
	var letGo sync.Map
	group, user := e.names.Group(""), e.names.User("")
	in, err := newIntake(e.nc, e.names.StreamOut(),
		intakeSource{Consumer: e.names.PartitionConsumer(0), Filters: []string{e.names.PartitionFilter(0)}},
		intakeSource{Consumer: e.names.FanOutConsumer(0), Filters: e.names.FanOutFilters(0)},
		func() uint64 { return 0 }, fanOutClear, 1<<20, run.deliver,
		func(s string) bool {
			if strings.HasPrefix(s, group) || strings.HasPrefix(s, user) {
				letGo.Store(s, true)
				return true
			}
			return false
		}, func(slog.Level, string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.stop(); in.close() })
	waitFor(t, "the backlog handed on", 30*time.Second, func() bool { return run.count() >= want })
	for burst := 0; burst < 40; burst++ {
		publish(rng.IntN(100))
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
	}
	waitFor(t, "every message handed on", 30*time.Second, func() bool { return run.count() >= want })
	time.Sleep(200 * time.Millisecond) // anything more would be a duplicate

	run.mu.Lock()
	defer run.mu.Unlock()
	if len(run.seqs) != want {
		t.Errorf("handed on %d messages, want %d", len(run.seqs), want)
	}
	for i := 1; i < len(run.seqs); i++ {
		if run.seqs[i] <= run.seqs[i-1] {
			t.Fatalf("hand-on %d: sequence %d (%s) after %d (%s)", i, run.seqs[i], run.subj[run.seqs[i]], run.seqs[i-1], run.subj[run.seqs[i-1]])
		}
	}
	for _, s := range run.subj {
		if st, err := e.names.ParseStored(s); err == nil && (st.Kind == subjects.KindSend) && st.Partition != 0 {
			t.Errorf("handed on %s, stored in partition %d", s, st.Partition)
		}
	}
	in.mu.Lock()
	fromLog := in.fromLog
	in.mu.Unlock()
	if withLog && fromLog == 0 {
		t.Errorf("the log never moved the fan-out watermark")
	}
	copies := 0
	letGo.Range(func(any, any) bool { copies++; return true })
	if copies == 0 {
		t.Errorf("no group or user copy stored in partition 0 was let go of")
	}
	t.Logf("%d messages handed on in stream order, %d distinct group/user subjects let go of; the log moved the watermark %d times", len(run.seqs), copies, fromLog)
}

// TestIntakeCollectsWhatAPreviousOwnerHeld: one intake reads partition 0
// and dies holding messages of both consumers unacknowledged; a second one
// started after the ack wait, told what the consumers hold, hands on
// exactly the rest, from the oldest held message, in stream order (new
// messages of one consumer must not overtake the other's redeliveries).
func TestIntakeCollectsWhatAPreviousOwnerHeld(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	if err := e.js.DeleteStream(ctx, e.names.StreamOut()); err != nil {
		t.Fatal(err)
	}
	const ackWait = time.Second
	if err := subjects.Provision(ctx, e.js, e.names, subjects.StreamOptions{Partitions: 4, AckWait: ackWait}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	want := 0
	for i := 0; i < 1500; i++ {
		tok := subjects.Token(fmt.Sprintf("c%d", rng.IntN(200)))
		subj := e.names.Send(tok)
		if rng.IntN(10) == 0 {
			subj = e.names.Broadcast()
		}
		if subj == e.names.Broadcast() || subjects.Partition(tok, 4) == 0 {
			want++
		}
		e.publish(subj, []byte("x"))
	}
	sources := func() (d, f intakeSource) {
		d = intakeSource{Consumer: e.names.PartitionConsumer(0), Filters: []string{e.names.PartitionFilter(0)}, CollectWait: 5 * time.Second}
		f = intakeSource{Consumer: e.names.FanOutConsumer(0), Filters: e.names.FanOutFilters(0), CollectWait: 5 * time.Second}
		for _, s := range []*intakeSource{&d, &f} {
			c, err := e.js.Consumer(ctx, e.names.StreamOut(), s.Consumer)
			if err != nil {
				t.Fatal(err)
			}
			info := c.CachedInfo()
			s.Delivered, s.AckFloor, s.Held = info.Delivered.Stream, info.AckFloor.Stream, info.NumAckPending
		}
		return d, f
	}
	// The first owner acknowledges its first 100 messages, then holds
	// what it gets until it dies.
	var mu sync.Mutex
	var firstSeqs []uint64
	d, f := sources()
	first, err := newIntake(e.nc, e.names.StreamOut(), d, f, func() uint64 { return 0 }, nil, 1<<20, func(m jetstream.Msg) {
		mu.Lock()
		defer mu.Unlock()
		firstSeqs = append(firstSeqs, streamSeq(m))
		if len(firstSeqs) <= 100 {
			_ = m.Ack()
		}
	}, func(string) bool { return false }, func(slog.Level, string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first owner to get 300 messages", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(firstSeqs) >= 300
	})
	first.stop()
	first.close()
	time.Sleep(ackWait + 250*time.Millisecond)

	d, f = sources()
	if d.Held+f.Held == 0 || f.Held == 0 {
		t.Fatalf("the first owner held %d direct and %d fan-out messages; the test needs both", d.Held, f.Held)
	}
	run := &intakeRun{subj: map[uint64]string{}}
	second, err := newIntake(e.nc, e.names.StreamOut(), d, f, func() uint64 { return 0 }, nil, 1<<20, run.deliver,
		func(string) bool { return false }, func(slog.Level, string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.stop(); second.close() })
	waitFor(t, "the rest handed on", 30*time.Second, func() bool { return run.count() >= want-100 })
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	oldest := firstSeqs[100]
	mu.Unlock()
	run.mu.Lock()
	defer run.mu.Unlock()
	if len(run.seqs) != want-100 {
		t.Errorf("the second owner handed on %d messages, want %d", len(run.seqs), want-100)
	}
	if run.seqs[0] != oldest {
		t.Errorf("the second owner began with %d, want the oldest held, %d", run.seqs[0], oldest)
	}
	for i := 1; i < len(run.seqs); i++ {
		if run.seqs[i] <= run.seqs[i-1] {
			t.Fatalf("hand-on %d: sequence %d (%s) after %d (%s)", i, run.seqs[i], run.subj[run.seqs[i]], run.seqs[i-1], run.subj[run.seqs[i-1]])
		}
	}
	t.Logf("held by the first owner: %d direct, %d fan-out; the second handed on %d in order", d.Held, f.Held, len(run.seqs))
}
