package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// A full outbound log refuses new commands with an error (discard new):
// nothing already stored is dropped to make room, every stored command is
// pushed once the gateway answers again, and once the log is trimmed it
// takes commands again.
func TestFullLogRefusesAndLosesNothing(t *testing.T) {
	var open atomic.Bool
	e := newEnv(t, func(p push, attempt int) (int, int) {
		if !open.Load() {
			return http.StatusServiceUnavailable, 0
		}
		return http.StatusOK, 0
	})
	e.register("full")
	e.start(func(o *Options) {
		o.Streams.OutMaxBytes = 64 << 10
		o.MaxAttempts = 1000
	})
	tok := subjects.Token("full")
	body := strings.Repeat("x", 1000)
	stored := 0
	var refusal error
	for i := 0; i < 1000 && refusal == nil; i++ {
		_, refusal = e.js.Publish(context.Background(), e.names.Send(tok), []byte(fmt.Sprintf("%04d%s", i, body)))
		if refusal == nil {
			stored++
		}
	}
	var apiErr *jetstream.APIError
	if refusal == nil || !errors.As(refusal, &apiErr) {
		t.Fatalf("publishing into a full log: %d stored, error %v; want a JetStream error", stored, refusal)
	}
	t.Logf("%d commands of 1 KB stored in a 64 KiB log; then: %v", stored, refusal)
	open.Store(true)
	waitFor(t, "every stored command pushed", 30*time.Second, func() bool { return len(e.tg.of("full")) >= stored })
	got := e.tg.of("full")
	for i, p := range got {
		if want := fmt.Sprintf("%04d", i); !strings.HasPrefix(p.Data, want) {
			t.Fatalf("push %d carries %.4s…, want %s… (order or loss)", i, p.Data, want)
		}
	}
	if len(got) != stored {
		t.Errorf("%d pushes for %d stored commands", len(got), stored)
	}
	// Half full and resolved: trimmed without waiting for the replay
	// window, and publishers are served again.
	waitFor(t, "the log to take commands again", 30*time.Second, func() bool {
		_, err := e.js.Publish(context.Background(), e.names.Send(tok), []byte("again"))
		return err == nil
	})
}

// A connection that stalls (its pushes fail and are retried, its commands
// pile up past its partition's share of the held bytes) holds back its own
// partition only: a connection of another partition gets every command, and
// the time it took is printed against a run without the stall.
func TestStalledPartitionDoesNotSlowOthers(t *testing.T) {
	const n, size = 200, 16 << 10
	// Two tokens in different partitions.
	stalled, other := subjects.Token("stalled"), ""
	otherID := ""
	for i := 0; other == ""; i++ {
		otherID = fmt.Sprintf("other-%d", i)
		if tk := subjects.Token(otherID); subjects.Partition(tk, subjects.DefaultPartitions) != subjects.Partition(stalled, subjects.DefaultPartitions) {
			other = tk
		}
	}
	run := func(stall bool) time.Duration {
		e := newEnv(t, func(p push, attempt int) (int, int) {
			if stall && p.ConnID == "stalled" {
				return http.StatusServiceUnavailable, 0
			}
			return http.StatusOK, 0
		})
		b := e.start(func(o *Options) {
			o.MaxHeldBytes = 2 << 20 // a 64 KiB share per partition
			o.MaxAttempts = 1000
			o.BackoffBase, o.BackoffMax = 50*time.Millisecond, 200*time.Millisecond
		})
		data := strings.Repeat("s", size)
		var msgs []*nats.Msg
		for i := 0; i < n; i++ {
			msgs = append(msgs, &nats.Msg{Subject: e.names.Send(stalled), Data: []byte(data)},
				&nats.Msg{Subject: e.names.Send(other), Data: []byte(fmt.Sprint(i))})
		}
		start := time.Now()
		e.publishAsync(msgs)
		want := make([]int, n)
		for i := range want {
			want[i] = i
		}
		distinct := func() int {
			seen := map[string]bool{}
			for _, p := range e.tg.of(otherID) {
				seen[p.Data] = true
			}
			return len(seen)
		}
		waitFor(t, "every command of the other partition pushed", 60*time.Second, func() bool { return distinct() >= n })
		took := time.Since(start)
		var got []int
		for _, p := range e.tg.of(otherID) {
			v, _ := strconv.Atoi(p.Data)
			got = append(got, v)
		}
		// A partition dropped on a loaded machine repeats its window once.
		checkWindows(t, "other connection", got, want, int(e.drops.Load()))
		if stall {
			if got := len(e.tg.of(stalled)); got != 0 {
				t.Errorf("the stalled connection got %d pushes", got)
			}
			if h := b.held(); h > b.opts.MaxHeldBytes {
				t.Errorf("held %d bytes, over the %d budget", h, b.opts.MaxHeldBytes)
			}
			t.Logf("held %d bytes (budget %d), rewinds %v", b.held(), b.opts.MaxHeldBytes, testutil.ToFloat64(b.pm.Rewinds))
		}
		return took
	}
	run(false) // warm-up: the first run pays for the first connections and compilation of paths
	stalledRun := run(true)
	base := run(false)
	t.Logf("%d commands to a connection of another partition: %v with a stalled partition beside it, %v without (ratio %.2f)",
		n, stalledRun.Round(time.Millisecond), base.Round(time.Millisecond), float64(stalledRun)/float64(base))
}

// A partition taken over with commands its previous owner left pending
// takes nothing newer until those were offered again: the chaos run lost
// 35 sends and 26 fan-outs of one connection when a new owner, whose reader
// sat exactly at the committed next, took the newest command first and
// replayed the pending ones after it (the edge then dropped them as older
// than what it had written).
func TestReplayBeforeNewer(t *testing.T) {
	b := &Bridge{m: metrics.New(prometheus.NewRegistry())}
	p := newPart(b, 0)
	p.begin(subjects.Position{Next: 10, Pending: []subjects.PendingCommand{{Seq: 5}, {Seq: 7, Tokens: []string{"a"}}}}, 1, 0)
	if take, _, gap := p.offer(10, 9); take || !gap {
		t.Fatalf("offered 10 right after 9 with 5 and 7 pending: take %v gap %v; want a gap (read again from 5)", take, gap)
	}
	if gap := p.pass(10, 9); !gap {
		t.Errorf("passing over 10 with 5 and 7 pending: no gap")
	}
	// Nor a pending command while an older pending one is behind.
	if take, _, gap := p.offer(7, 6); take || !gap {
		t.Errorf("offered pending 7 right after 6 with pending 5 behind: take %v gap %v; want a gap", take, gap)
	}
	if from, ok := p.from(); !ok || from != 5 {
		t.Errorf("reads from %d (%v), want 5", from, ok)
	}
	// Read again from 5: the pending ones first, then the newer.
	for _, c := range []struct {
		seq, prev uint64
		take      bool
		tokens    []string
	}{{5, 4, true, nil}, {6, 5, false, nil}, {7, 6, true, []string{"a"}}, {8, 7, false, nil}, {9, 8, false, nil}, {10, 9, true, nil}} {
		take, tokens, gap := p.offer(c.seq, c.prev)
		if take != c.take || gap || fmt.Sprint(tokens) != fmt.Sprint(c.tokens) {
			t.Errorf("offer %d after %d: take %v tokens %v gap %v; want take %v tokens %v", c.seq, c.prev, take, tokens, gap, c.take, c.tokens)
		}
		if take && !p.hold(&delivery{seq: c.seq}) {
			t.Fatalf("hold %d refused", c.seq)
		}
	}
	// A pending command offered but not held (the partition stopped in
	// between) stays pending in the position.
	q := newPart(b, 1)
	q.begin(subjects.Position{Next: 10, Pending: []subjects.PendingCommand{{Seq: 5}}}, 1, 0)
	if take, _, _ := q.offer(5, 4); !take {
		t.Fatal("pending 5 not offered")
	}
	q.stopping.Store(true)
	if q.hold(&delivery{seq: 5}) {
		t.Fatal("a stopping partition held 5")
	}
	if pos, ok := q.position(); !ok || len(pos.Pending) != 1 || pos.Pending[0].Seq != 5 {
		t.Errorf("position after an offer not held: %+v, want 5 still pending", pos)
	}
}

// A position commit whose answer was lost but that the server applied (a
// timeout during a leader election) is this bridge's own: the next commit
// adopts it instead of giving the partition up as written by another
// bridge. The chaos run saw three bridges drop partitions that way after a
// NATS node was killed.
func TestLateCommitIsOurs(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(nil)
	tok := subjects.Token("late-commit")
	pn := subjects.Partition(tok, b.opts.Partitions)
	var p *part
	for _, q := range b.ownedParts() {
		if q.n == pn {
			p = q
		}
	}
	if p == nil {
		t.Fatalf("partition %d not owned", pn)
	}
	waitFor(t, "the partition to begin", 10*time.Second, p.begun.Load)
	// What a commit applied after its timeout leaves: a newer revision
	// written by this bridge.
	pos, _ := p.position()
	pos.At = time.Now()
	if _, err := b.positions.Put(context.Background(), subjects.PositionKey(pn), pos.Encode()); err != nil {
		t.Fatal(err)
	}
	e.publish(e.names.Send(tok), []byte("after"))
	waitFor(t, "the send pushed", 10*time.Second, func() bool { return len(e.tg.of("late-commit")) == 1 })
	waitFor(t, "a commit after the late one", 10*time.Second, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.committed.Next > pos.Next
	})
	if p.broken.Load() || testutil.ToFloat64(b.pm.Commits.WithLabelValues("conflict")) != 0 {
		t.Errorf("partition broken %v, conflicts %v: the bridge's own late commit taken for another bridge's", p.broken.Load(), testutil.ToFloat64(b.pm.Commits.WithLabelValues("conflict")))
	}
}
