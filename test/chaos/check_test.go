package main

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The checker is tested on histories written by hand: each rule of
// check.go's doc comment, both ways.

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// hist is a small history under construction.
type hist struct{ h History }

func newHist() *hist { return &hist{h: History{Run: RunRec{T: "run", Repeat: RepeatExact}}} }

// conn adds a connection open at open (ms), with the user and groups its
// connect event gives it.
func (b *hist) conn(token string, open int, user string, groups ...string) *ConnRec {
	b.h.Conns = append(b.h.Conns, ConnRec{T: "conn", Token: token, Open: at(open), Frames: []string{}})
	b.h.Connects = append(b.h.Connects, EventRec{T: "connect", Token: token, User: user, Groups: groups, Stored: at(open - 1)})
	return &b.h.Conns[len(b.h.Conns)-1]
}

// pub adds a command published at start (ms), acked 2 ms later with seq.
func (b *hist) pub(id, kind, target string, start int, seq uint64) {
	p := PubRec{T: "pub", ID: id, Kind: kind, Start: at(start), Ack: at(start + 2), Seq: seq}
	switch kind {
	case KindSend, KindBulk, KindClose:
		p.Token = target
	case KindGroup:
		p.Group = target
	case KindUser:
		p.User = target
	case KindBroadcast:
		if target != "" {
			p.Exclude = strings.Split(target, ",")
		}
	}
	b.h.Pubs = append(b.h.Pubs, p)
}

func (b *hist) recv(token string, ids ...string) {
	for i := range b.h.Conns {
		if b.h.Conns[i].Token == token {
			b.h.Conns[i].Frames = append(b.h.Conns[i].Frames, ids...)
			return
		}
	}
	panic("no connection " + token)
}

func (b *hist) end(token string, ms int, causes ...string) {
	for i := range b.h.Conns {
		c := &b.h.Conns[i]
		if c.Token == token {
			c.Ended, c.End = true, at(ms)
			for _, k := range causes {
				c.Causes = append(c.Causes, Cause{Kind: k, At: at(ms)})
			}
			return
		}
	}
	panic("no connection " + token)
}

func (b *hist) disc(token, reason string) {
	b.h.Disconnects = append(b.h.Disconnects, EventRec{T: "disconnect", Token: token, Reason: reason})
}

// dlq adds a dead letter stored 5 ms after the message's publish began.
func (b *hist) dlq(token, id, kind, reason string) {
	stored := time.Time{}
	for _, p := range b.h.Pubs {
		if p.ID == id {
			stored = p.Start.Add(5 * time.Millisecond)
		}
	}
	b.dlqAt(token, id, kind, reason, stored)
}

func (b *hist) dlqAt(token, id, kind, reason string, stored time.Time) {
	b.h.DLQ = append(b.h.DLQ, DLQRec{T: "dlq", Token: token, ID: id, Kind: kind, Reason: reason, Stored: stored})
}

// cause adds a later cause to a connection that ended.
func (b *hist) cause(token, kind string, ms int) {
	for i := range b.h.Conns {
		if c := &b.h.Conns[i]; c.Token == token {
			c.Causes = append(c.Causes, Cause{Kind: kind, At: at(ms)})
			return
		}
	}
	panic("no connection " + token)
}

func check(b *hist, repeat string) *Report {
	return Checker{Repeat: repeat}.Check(&b.h)
}

// categories lists the findings' categories, sorted, one per finding.
func categories(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Category)
	}
	slices.Sort(out)
	return out
}

func wantFindings(t *testing.T, r *Report, want ...string) {
	t.Helper()
	got := categories(r)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("findings %q, want %q:", got, want)
		for _, f := range r.Findings {
			t.Logf("  [%s] %s: %s", f.Category, f.Conn, f.Detail)
		}
	}
}

func TestCheckCleanLiveConnection(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1", "g1")
	b.conn("B", 0, "u2", "g2")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindBroadcast, "", 20, 2)
	b.pub("m3", KindGroup, "g1", 30, 3)
	b.pub("m4", KindUser, "u2", 40, 4)
	b.pub("m5", KindBroadcast, "B", 50, 5) // excludes B
	b.recv("A", "m1", "m2", "m3", "m5")
	b.recv("B", "m2", "m4")
	r := check(b, RepeatExact)
	wantFindings(t, r)
	if r.Expected != 6 || r.Delivered != 6 {
		t.Errorf("owed %d, delivered %d; want 6 and 6", r.Expected, r.Delivered)
	}
}

func TestCheckLostOnLiveConnection(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1", "g1")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindSend, "A", 20, 2)
	b.pub("m3", KindGroup, "g1", 30, 3)
	b.recv("A", "m1")
	r := check(b, RepeatExact)
	wantFindings(t, r, CatLost, CatLost)
	// Dead-lettered is accounted for, whatever the reason.
	b.dlq("A", "m2", KindSend, "retries")
	b.dlq("A", "m3", KindGroup, "permanent")
	wantFindings(t, check(b, RepeatExact))
}

func TestCheckFanOutWindow(t *testing.T) {
	b := newHist()
	b.conn("A", 100, "u1", "g1")
	b.pub("m1", KindBroadcast, "", 50, 1)  // published before A opened: not owed
	b.pub("m2", KindBroadcast, "", 150, 2) // owed
	b.recv("A", "m1")
	r := check(b, RepeatExact)
	wantFindings(t, r, CatLost)
	if r.Extra != 1 {
		t.Errorf("extra %d, want 1 (m1 received though not owed)", r.Extra)
	}
	// With a grace longer than the gap, m2 is not owed either.
	r = Checker{Repeat: RepeatExact, FanOutGrace: 100 * time.Millisecond}.Check(&b.h)
	wantFindings(t, r)
}

func TestCheckMisdelivered(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1", "g1")
	b.conn("B", 0, "u2", "g2")
	b.pub("m1", KindSend, "B", 10, 1)
	b.pub("m2", KindBroadcast, "A", 20, 2)
	b.pub("m3", KindGroup, "g2", 30, 3)
	b.recv("B", "m1", "m2", "m3")
	b.recv("A", "m1", "m2", "m3", "m99")
	wantFindings(t, check(b, RepeatExact), CatMisdelivered, CatMisdelivered, CatMisdelivered, CatMisdelivered)
}

func TestCheckOrder(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindBroadcast, "", 20, 2)
	b.pub("m3", KindSend, "A", 30, 3)
	b.recv("A", "m1", "m3", "m2")
	r := check(b, RepeatExact)
	wantFindings(t, r, CatOrder)
	if !strings.Contains(r.Findings[0].Detail, "m2") {
		t.Errorf("finding %q should name m2", r.Findings[0].Detail)
	}
}

func TestCheckRepeatRules(t *testing.T) {
	for _, tc := range []struct {
		frames        []string
		exact, latest []string
	}{
		{[]string{"m1", "m2", "m3"}, nil, nil},
		{[]string{"m1", "m2", "m2", "m3"}, []string{CatRepeat}, nil},                 // the latest again
		{[]string{"m1", "m2", "m1", "m3"}, []string{CatRepeat}, []string{CatRepeat}}, // an older one
		{[]string{"m1", "m2", "m3", "m2", "m3"}, []string{CatRepeat, CatRepeat}, []string{CatRepeat, CatRepeat}},
	} {
		b := newHist()
		b.conn("A", 0, "u1")
		for i := 1; i <= 3; i++ {
			b.pub("m"+string(rune('0'+i)), KindSend, "A", 10*i, uint64(i))
		}
		b.recv("A", tc.frames...)
		t.Run(strings.Join(tc.frames, ","), func(t *testing.T) {
			wantFindings(t, check(b, RepeatExact), tc.exact...)
			wantFindings(t, check(b, RepeatLatest), tc.latest...)
		})
	}
}

func TestCheckEndedConnections(t *testing.T) {
	// Each case: A received m1, ended at 100 ms by cause; m2 (send,
	// published 50 ms), m3 (broadcast, published 60 ms) and m4 (send,
	// published 200 ms, after the end) were not received.
	for _, tc := range []struct {
		cause string
		dlq   []string // of m2..m4 dead-lettered
		want  []string
	}{
		// The client closed: m2 may have been written during the close
		// handshake; m3 is a fan-out in the tail; m4 came after the end and
		// must be dead-lettered.
		{ActionClientClose, nil, []string{CatLost}},
		{ActionClientClose, []string{"m4"}, nil},
		{FaultEdgeKill, []string{"m4"}, nil},
		// SIGTERM of the edge and a backend close lose no written frame:
		// m2 must be received or dead-lettered.
		{FaultEdgeTerm, []string{"m4"}, []string{CatLost}},
		{FaultEdgeTerm, []string{"m2", "m4"}, nil},
		{ActionBackendClose, []string{"m2", "m4"}, nil},
		{FaultStall, []string{"m4"}, []string{CatLost}},
		// Nothing done to it: strict too.
		{"", []string{"m4"}, []string{CatLost}},
	} {
		t.Run(tc.cause+"+"+strings.Join(tc.dlq, ","), func(t *testing.T) {
			b := newHist()
			b.conn("A", 0, "u1")
			b.pub("m1", KindSend, "A", 10, 1)
			b.pub("m2", KindSend, "A", 50, 2)
			b.pub("m3", KindBroadcast, "", 60, 3)
			b.pub("m4", KindSend, "A", 200, 4)
			b.recv("A", "m1")
			if tc.cause == "" {
				b.end("A", 100)
			} else {
				b.end("A", 100, tc.cause)
			}
			b.disc("A", "client")
			for _, id := range tc.dlq {
				b.dlq("A", id, KindSend, "gone")
			}
			wantFindings(t, check(b, RepeatExact), tc.want...)
		})
	}
}

func TestCheckExcuseIsOnlyTheTail(t *testing.T) {
	// A message missing before one received is lost, whatever the end.
	b := newHist()
	b.conn("A", 0, "u1")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindBroadcast, "", 20, 2)
	b.pub("m3", KindSend, "A", 30, 3)
	b.recv("A", "m1", "m3")
	b.end("A", 100, ActionClientClose)
	b.disc("A", "client")
	wantFindings(t, check(b, RepeatExact), CatLost)
}

func TestCheckGoneWhileLive(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindSend, "A", 20, 2)
	b.recv("A", "m2")
	b.dlq("A", "m1", KindSend, "gone")
	wantFindings(t, check(b, RepeatExact), CatGoneLive)
}

// A dead letter gone made after the connection ended, for a message it had
// received (pushed again by the bridge that took its partition over), is
// no finding; one stored before the connection took a later push is.
func TestCheckGoneAfterTheEnd(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindSend, "A", 20, 2)
	b.recv("A", "m1", "m2")
	b.end("A", 100, FaultStall)
	b.disc("A", "client")
	b.dlqAt("A", "m1", KindSend, "gone", at(500))
	wantFindings(t, check(b, RepeatExact))

	b.h.DLQ = nil
	b.dlqAt("A", "m1", KindSend, "gone", at(15)) // before m2 was published
	wantFindings(t, check(b, RepeatExact), CatGoneLive)
}

// A client that stopped reading and then closed discards what the edge
// wrote into its socket meanwhile: a send published between the stall and
// the close is excused; one published after the close is owed a dead letter.
func TestCheckStallThenClose(t *testing.T) {
	for _, tc := range []struct {
		dlq  []string
		want []string
	}{
		{nil, []string{CatLost}},
		{[]string{"m3"}, nil},
	} {
		b := newHist()
		b.conn("A", 0, "u1")
		b.pub("m1", KindSend, "A", 10, 1)
		b.pub("m2", KindSend, "A", 200, 2) // stalled, before the close
		b.pub("m3", KindSend, "A", 400, 3) // after the close
		b.recv("A", "m1")
		b.end("A", 100, FaultStall)
		b.cause("A", ActionClientClose, 300)
		b.disc("A", "client")
		for _, id := range tc.dlq {
			b.dlq("A", id, KindSend, "gone")
		}
		wantFindings(t, check(b, RepeatExact), tc.want...)
	}
}

func TestCheckDisconnectEvents(t *testing.T) {
	b := newHist()
	b.conn("live", 0, "u1")
	b.conn("once", 0, "u1")
	b.conn("twice", 0, "u1")
	b.conn("never", 0, "u1")
	b.end("once", 10, ActionClientClose)
	b.end("twice", 10, FaultEdgeKill)
	b.end("never", 10, FaultEdgeTerm)
	b.disc("once", "client")
	b.disc("twice", "lost")
	b.disc("twice", "gone")
	// A connection registered whose client never had it, announced once,
	// and one not announced.
	b.h.Connects = append(b.h.Connects, EventRec{T: "connect", Token: "phantom-ok", Protocols: []string{"chaos.c1.2"}},
		EventRec{T: "connect", Token: "phantom-bad", Protocols: []string{"chaos.c1.3"}})
	b.disc("phantom-ok", "client")
	r := check(b, RepeatExact)
	wantFindings(t, r, CatDisconnect, CatDisconnect, CatDisconnect)
	b.disc("live", "lost")
	wantFindings(t, check(b, RepeatExact), CatDisconnect, CatDisconnect, CatDisconnect, CatDisconnect)
	if r.Phantoms != 2 {
		t.Errorf("phantoms %d, want 2", r.Phantoms)
	}
}

func TestCheckProcesses(t *testing.T) {
	b := newHist()
	b.h.Procs = []ProcRec{
		{T: "proc", Name: "bridge-1", Event: "exit", Intended: true, Ready: true},   // a fault's SIGKILL
		{T: "proc", Name: "bridge-2", Event: "exit", Intended: false, Ready: false}, // failed start
		{T: "proc", Name: "bridge-3", Event: "exit", Intended: false, Ready: true},  // crash
		{T: "proc", Name: "edge-1", Event: "health", Detail: "ok"},
		{T: "proc", Name: "edge-2", Event: "health", Detail: "not running"},
	}
	r := check(b, RepeatExact)
	wantFindings(t, r, CatProcess, CatProcess)
	if r.ProcStartFails != 1 {
		t.Errorf("start failures %d, want 1", r.ProcStartFails)
	}
}

func TestHistoryRoundTrip(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1", "g1")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindGroup, "g1", 20, 2)
	b.recv("A", "m2", "m1")
	b.end("A", 100, FaultEdgeKill)
	b.disc("A", "lost")
	b.dlq("A", "m1", KindSend, "gone")
	b.h.Faults = []FaultRec{{T: "fault", N: 1, Kind: FaultEdgeKill, Target: "edge-1", Phase: "start", At: at(99)}}
	b.h.Drain = &DrainRec{T: "drain", Drained: true}
	path := filepath.Join(t.TempDir(), "history.jsonl")
	hw, err := newHistoryWriter(path)
	if err != nil {
		t.Fatal(err)
	}
	hw.add(b.h.Run)
	for _, r := range b.h.Faults {
		hw.add(r)
	}
	for _, r := range b.h.Pubs {
		hw.add(r)
	}
	for _, r := range b.h.Conns {
		hw.add(r)
	}
	for _, r := range b.h.Connects {
		hw.add(r)
	}
	for _, r := range b.h.Disconnects {
		hw.add(r)
	}
	for _, r := range b.h.DLQ {
		hw.add(r)
	}
	hw.add(*b.h.Drain)
	if err := hw.close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := ReadHistory(f)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Conns, b.h.Conns) || !reflect.DeepEqual(got.Pubs, b.h.Pubs) || !reflect.DeepEqual(got.DLQ, b.h.DLQ) {
		t.Errorf("history read back differs:\n got %+v\nwant %+v", got, b.h)
	}
	want := categories(check(b, RepeatExact))
	// m1 came after m2, and was dead-lettered gone though m2 got through.
	if g := categories(Checker{Repeat: RepeatExact}.Check(got)); !slices.Equal(g, want) || !slices.Equal(want, []string{CatGoneLive, CatOrder}) {
		t.Errorf("findings of the history read back %q, of the original %q, want [%s %s]", g, want, CatGoneLive, CatOrder)
	}
}

func TestParseFaults(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"all", AllFaults},
		{"all,-natskill", slices.DeleteFunc(slices.Clone(AllFaults), func(k string) bool { return k == FaultNATSKill })},
		{"edgekill,bridgecut", []string{FaultBridgeCut, FaultEdgeKill}},
		{"none", nil},
		{"", nil},
	} {
		got, err := ParseFaults(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseFaults(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"nodekill", "all,-nodekill"} {
		if _, err := ParseFaults(bad); err == nil || !strings.Contains(err.Error(), "unknown fault kind") {
			t.Errorf("ParseFaults(%q) = %v, want an unknown fault kind error", bad, err)
		}
	}
}

func TestPlanReplays(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Seed, cfg.Duration, cfg.Clients, cfg.Rate = 7, 30*time.Second, 24, 100
	a, b := NewPlan(cfg), NewPlan(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two plans of one seed differ")
	}
	if len(a.Faults) < 5 || len(a.Traffic) != 3000 || len(a.Actions) == 0 {
		t.Fatalf("plan of 30 s: %d faults, %d commands, %d actions", len(a.Faults), len(a.Traffic), len(a.Actions))
	}
	cfg.Faults = []string{FaultBridgeKill}
	c := NewPlan(cfg)
	if !reflect.DeepEqual(a.Traffic, c.Traffic) || !reflect.DeepEqual(a.Clients, c.Clients) || !reflect.DeepEqual(a.Actions, c.Actions) {
		t.Error("changing the fault selection changed the traffic plan")
	}
	for _, f := range c.Faults {
		if f.Kind != FaultBridgeKill {
			t.Errorf("fault %s not of the selection", f)
		}
	}
	cfg.Seed = 8
	if d := NewPlan(cfg); reflect.DeepEqual(d.Traffic, c.Traffic) {
		t.Error("another seed gave the same traffic")
	}
}

func TestPlanLimitsOverlaps(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Seed, cfg.Duration, cfg.FaultEvery = 3, 10*time.Minute, time.Second
	p := NewPlan(cfg)
	// At any fault's start, count the faults of its class still within
	// their planned span.
	span := func(f Fault) time.Duration {
		switch f.Kind {
		case FaultNATSKill:
			return f.Dur + natsCatchUpMargin
		case FaultBridgeKill, FaultBridgeTerm, FaultEdgeKill, FaultEdgeTerm:
			return f.Dur + processStartMargin
		}
		return f.Dur
	}
	class := map[string]string{FaultBridgeKill: "bridge", FaultBridgeTerm: "bridge", FaultBridgeCut: "bridge",
		FaultNATSKill: "node", FaultEdgeKill: "edge", FaultEdgeTerm: "edge"}
	limit := map[string]int{"bridge": 2, "node": 1, "edge": 1}
	for i, f := range p.Faults {
		c := class[f.Kind]
		if c == "" {
			continue
		}
		n := 1
		for _, g := range p.Faults[:i] {
			if class[g.Kind] == c && g.At+span(g) > f.At {
				n++
				if g.Target == f.Target {
					t.Errorf("%s starts while %s on the same target is planned to last", f, g)
				}
			}
		}
		if n > limit[c] {
			t.Errorf("%s: %d %s faults at once, limit %d", f, n, c, limit[c])
		}
	}
}

func TestCheckTailFanOutExpandedWhileRegistered(t *testing.T) {
	// A ended (its edge was stopped) at 100 ms and was announced at 1 s;
	// B shares its partition. B received the broadcast m2 at 150 ms, so
	// the partition expanded it while A's record was still there: A must
	// have it or a dead letter. Had B received it only at 700 ms, or A's
	// client closed (a frame may die in the close handshake), it is
	// excused.
	//
	// A takeover of the partition from a position at or below m2 after A
	// was announced (at 1.5 s) means the new owner expanded m2 again, with
	// A gone: excused. One before the announcement, or from a position
	// past m2, changes nothing.
	for _, tc := range []struct {
		name  string
		bAt   int64 // ms after B opened (at 0)
		cause string
		take  *TakeRec
		want  []string
	}{
		{"expanded before", 150, FaultEdgeTerm, nil, []string{CatLost}},
		{"expanded late", 700, FaultEdgeTerm, nil, nil},
		{"client closed", 150, ActionClientClose, nil, nil},
		{"taken over after the end", 150, FaultEdgeTerm, &TakeRec{Partition: 0, At: at(1500), Position: 2}, nil},
		{"taken over before the end", 150, FaultEdgeTerm, &TakeRec{Partition: 0, At: at(900), Position: 2}, []string{CatLost}},
		{"taken over past it", 150, FaultEdgeTerm, &TakeRec{Partition: 0, At: at(1500), Position: 3}, []string{CatLost}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newHist()
			b.h.Run.Partitions = 1
			b.conn("A", 0, "u1")
			b.conn("B", 0, "u2")
			b.pub("m1", KindSend, "A", 10, 1)
			b.pub("m2", KindBroadcast, "", 50, 2)
			b.recv("A", "m1")
			b.h.Conns[0].FrameAt = []int64{20}
			b.recv("B", "m2")
			b.h.Conns[1].FrameAt = []int64{tc.bAt}
			b.end("A", 100, tc.cause)
			b.h.Disconnects = append(b.h.Disconnects, EventRec{T: "disconnect", Token: "A", Reason: "shutdown", Stored: at(1000)})
			if tc.take != nil {
				b.h.Takes = append(b.h.Takes, *tc.take)
			}
			wantFindings(t, check(b, RepeatExact), tc.want...)
		})
	}
}

func TestCheckPendingIsNotLost(t *testing.T) {
	b := newHist()
	b.conn("A", 0, "u1")
	b.pub("m1", KindSend, "A", 10, 1)
	b.pub("m2", KindSend, "A", 20, 2)
	b.h.Drain = &DrainRec{T: "drain", Drained: false, OutMsgs: 1}
	b.h.Pending = map[uint64]bool{2: true}
	b.recv("A", "m1")
	r := check(b, RepeatExact)
	wantFindings(t, r, CatDrain)
	if r.Pending != 1 || r.Lost != 0 {
		t.Errorf("pending %d, lost %d; want 1 and 0", r.Pending, r.Lost)
	}
	lost := Checker{Repeat: RepeatExact}.Check(&History{Run: b.h.Run, Conns: b.h.Conns, Connects: b.h.Connects, Pubs: b.h.Pubs})
	if len(lost.Findings) != 1 || lost.Findings[0].Seq != 2 {
		t.Errorf("without the pending record: %+v, want one lost finding of seq 2", lost.Findings)
	}
}

func TestReadTakes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bridge-1.log")
	log := `time=2026-12-06T13:08:54.584Z level=INFO msg=partitions component=bridge owned=7 of=8
time=2026-12-06T13:08:54.714Z level=INFO msg="partition taken" component=bridge partition=3 from="expired lease of vm-31518-574470" position=43222
=== bridge-1 start 2 at 2026-12-06T13:08:55Z: wsbridge [bridge]
time=2026-12-06T13:08:56.268Z level=INFO msg="partition taken" component=bridge partition=5 from="expired lease of vm-31509-71fc05" position=56107
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	got := readTakes(path, "bridge-1")
	want := []TakeRec{
		{T: "take", Bridge: "bridge-1", Partition: 3, At: time.Date(2026, 12, 6, 13, 8, 54, 714e6, time.UTC), Position: 43222},
		{T: "take", Bridge: "bridge-1", Partition: 5, At: time.Date(2026, 12, 6, 13, 8, 56, 268e6, time.UTC), Position: 56107},
	}
	if !slices.EqualFunc(got, want, func(a, b TakeRec) bool {
		return a.Partition == b.Partition && a.Position == b.Position && a.At.Equal(b.At) && a.Bridge == b.Bridge
	}) {
		t.Errorf("takes %+v, want %+v", got, want)
	}
}

// A backend close can take longer to be pushed than the window that makes
// it a cause of the end: a fan-out published after it is not owed, even
// when the partition expanded it while the connection was registered.
func TestCheckFanOutAfterASlowBackendClose(t *testing.T) {
	for _, closed := range []bool{false, true} {
		b := newHist()
		b.h.Run.Partitions = 1
		b.conn("A", 0, "u1")
		b.conn("B", 0, "u2")
		b.pub("m1", KindSend, "A", 10, 1)
		b.pub("m2", KindBroadcast, "", 50, 2)
		b.recv("A", "m1")
		b.h.Conns[0].FrameAt = []int64{20}
		b.recv("B", "m2")
		b.h.Conns[1].FrameAt = []int64{150}
		b.end("A", 30000)
		b.h.Disconnects = append(b.h.Disconnects, EventRec{T: "disconnect", Token: "A", Reason: "closed", Stored: at(30001)})
		want := []string{CatLost}
		if closed {
			b.h.Actions = append(b.h.Actions, ActionRec{T: "action", Kind: ActionBackendClose, Token: "A", At: at(40)})
			want = nil
		}
		wantFindings(t, check(b, RepeatExact), want...)
	}
}
