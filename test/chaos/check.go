package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// The checker judges a history against wsbridge's promises: nothing stored
// is lost, each connection gets its pushes in order, each command reaches a
// connection once (or, by the old rule, only the latest push repeats), and
// every connection that ended gets exactly one disconnect event.
//
// A connection is one WebSocket connection (one token). Its open time is
// when the client's dial returned: the registration function stored the
// registry record and the connect event before the edge accepted the
// upgrade, so both are stored by then. Its end, for one that ended, is the
// first sign of it: the runner acting on it (the client closing, a backend
// close being published for it, its edge being signalled, the client
// stalling), or the client seeing the connection fail.
//
// What a connection is owed (its expected messages), among the commands
// whose publish was acknowledged (so they are stored, with a sequence):
//
//   - every direct send (send, bulk) to its token, whenever published;
//   - every broadcast (unless Ws-Exclude names its token), group send to a
//     group it is in, and user send to its user (as its connect event
//     says), whose first publish attempt began at least FanOutGrace after
//     the connection opened, and whose publish was acknowledged before the
//     connection ended (or at any time, for a connection that is still
//     open).
//
// Each expected message must be received by the connection or
// dead-lettered for its token (WS_DLQ, P.dlq.<kind>.<token>, with a
// reason). One that is neither is lost, with two exceptions, both limited
// to a connection that ended and to its tail: the messages after the last
// one it received (by stream sequence; a connection gets its messages in
// stream order, so what it missed at its end is a suffix).
//
//   - A fan-out in the tail is excused: the bridge expands a fan-out when
//     it takes it, and a connection whose record was deleted when it
//     ended is no longer a target, so there is nothing to deliver or
//     dead-letter. Unless the history shows it was expanded while the
//     record was there: another connection of the same partition received
//     it more than half a second before this one's disconnect event was
//     stored (its record is deleted just before). Then, for an end that
//     loses no written frame, it is lost. Unless its partition was then
//     taken over (handed off, or from a crashed or cut owner: a position
//     holds at most 1,024 pending commands), from a position at or below
//     it, after the disconnect event was stored (the bridges' logs say
//     when): the new owner expanded it again, and the connection was no
//     longer registered.
//   - A direct send in the tail whose publish began before the end is
//     excused when the end can lose a frame the edge already wrote: the
//     client closed (its library discards frames that arrive during the
//     close handshake) or its edge was SIGKILLed (frames in the socket
//     buffers die with it). A client that stopped reading and then closed
//     without reading again discards what the edge wrote into the socket
//     while it stalled: for it, "before the end" means before its close,
//     and only what was published after the close must be dead-lettered.
//     Direct sends published after the end must be
//     dead-lettered (the edge answers 404, or its instance is gone), and
//     the other ends (SIGTERM of the edge: 1001 after every written frame;
//     a backend close: the close is pushed after every earlier send; a
//     stalled client: it reads what was buffered before the write timed
//     out) lose nothing.
//
// A connection still open at the end gets no exception: it is strict.
//
// Order: each connection's first receipts must be in increasing stream
// sequence. Repeats: by the exact rule no message is received twice; by
// the latest rule a message may be received again only right after itself
// (the bridge that took over a crashed one's partition may push the latest
// push again, never an older one). A frame of a message not addressed to
// the connection (another token, a group it is not in, a broadcast that
// excluded it) is misdelivered. A dead letter with reason gone for a
// connection that was still there (it is still open, or it received a
// message published after the dead letter was stored, and the message was not
// published after a backend close of it) is gone-while-live. A dead letter
// made after the end for a message the connection had received (pushed
// again by the bridge that took over its partition) is no finding: gone was
// true then.
//
// Disconnect events (read from WS_IN): a connection that ended, and a
// connection whose connect event was stored but whose client never got it
// (the dial failed after registration), needs exactly one; a connection
// still open needs none.
type Checker struct {
	Repeat      string
	FanOutGrace time.Duration
}

// Finding is one violation, for the report.
type Finding struct {
	Category string
	Conn     string // client.life and token
	Detail   string
	// Near lists the faults in progress around the finding (its message's
	// publish or receipt, its connection's end), as "#N kind target".
	Near []string
	// Seq is the stream sequence of the message a lost finding is about.
	Seq uint64
}

// Report is the checker's result.
type Report struct {
	Findings []Finding

	PublishedByKind map[string]int
	UnackedByKind   map[string]int
	Expected        int
	Delivered       int // expected messages received
	Extra           int // received fan-outs that were not owed (near an open or end)
	Lost            int
	Pending         int            // owed, still in WS_OUT at the end (a settle that did not drain)
	Excused         map[string]int // by the end cause that excused it
	MaxExcusedTail  int
	OutOfOrder      int
	OutOfOrderEarly int             // of which fan-outs published before the connection opened
	Latency         []time.Duration // publish to receipt of owed messages, sorted
	ByFault         map[string]int  // findings with a fault of this kind near; "none" without
	Repeats         int             // against the rule
	AllowedRepeats  int             // under the latest rule
	Misdelivered    int
	GoneLive        int
	ReceivedAndDLQ  int
	DisconnectBad   int
	DeadLetters     map[string]int // by reason
	DeadByKind      map[string]int // by reason and kind: "gone/send"
	ReasonsByCause  map[string]map[string]int
	Conns, Ended    int
	Phantoms        int
	ProcsBad        int
	ProcStartFails  int
	FaultsByKind    map[string][3]int // started, ended, skipped
	Drained         bool
	DrainDetail     string
}

// Failed reports whether any promise was broken.
func (r *Report) Failed() bool { return len(r.Findings) > 0 }

// Finding categories.
const (
	CatLost         = "lost"
	CatOrder        = "out-of-order"
	CatRepeat       = "repeat"
	CatMisdelivered = "misdelivered"
	CatGoneLive     = "gone-while-live"
	CatDisconnect   = "disconnects"
	CatProcess      = "process"
	CatDrain        = "drain"
	CatHistory      = "history"
)

type connView struct {
	rec       *ConnRec
	name      string
	user      string
	groups    []string
	hasEvent  bool
	maxRecv   uint64    // highest sequence received
	lossEnd   bool      // ended in a way that may lose a written frame
	lossAt    time.Time // when: the end, or later for a stalled client that then closed
	lossKind  string
	causeKind string
}

func isFanOut(kind string) bool {
	return kind == KindBroadcast || kind == KindGroup || kind == KindUser
}

func isDirect(kind string) bool { return kind == KindSend || kind == KindBulk }

// Check judges h.
func (ck Checker) Check(h *History) *Report {
	r := &Report{
		PublishedByKind: map[string]int{}, UnackedByKind: map[string]int{}, Excused: map[string]int{},
		DeadLetters: map[string]int{}, DeadByKind: map[string]int{}, ReasonsByCause: map[string]map[string]int{},
		FaultsByKind: map[string][3]int{}, ByFault: map[string]int{},
	}
	near := faultSpans(h.Faults)
	// addAt records a finding about something at t, naming the faults
	// active from before to after it.
	addAt := func(cat, conn string, t time.Time, before, after time.Duration, format string, a ...any) {
		f := Finding{Category: cat, Conn: conn, Detail: fmt.Sprintf(format, a...)}
		if !t.IsZero() {
			f.Near = near(t.Add(-before), t.Add(after))
		}
		r.Findings = append(r.Findings, f)
	}
	add := func(cat, conn, format string, a ...any) { addAt(cat, conn, time.Time{}, 0, 0, format, a...) }

	pubs := map[string]*PubRec{}
	for i := range h.Pubs {
		p := &h.Pubs[i]
		if _, dup := pubs[p.ID]; dup {
			add(CatHistory, "", "message id %s published twice in the history", p.ID)
			continue
		}
		pubs[p.ID] = p
		r.PublishedByKind[p.Kind]++
		if p.Seq == 0 {
			r.UnackedByKind[p.Kind]++
		}
	}
	connects := map[string]*EventRec{}
	for i := range h.Connects {
		e := &h.Connects[i]
		if _, ok := connects[e.Token]; !ok {
			connects[e.Token] = e
		}
	}
	discs := map[string][]EventRec{}
	for _, e := range h.Disconnects {
		discs[e.Token] = append(discs[e.Token], e)
	}
	// The earliest receipt of each fan-out in each partition: a partition
	// expands a fan-out before it pushes it to any of its connections.
	parts := h.Run.Partitions
	firstInPart := map[string]map[int]time.Time{}
	if parts > 0 {
		for i := range h.Conns {
			c := &h.Conns[i]
			pn := subjects.Partition(c.Token, parts)
			for k, id := range c.Frames {
				if k >= len(c.FrameAt) {
					break
				}
				t := c.Open.Add(time.Duration(c.FrameAt[k]) * time.Millisecond)
				m := firstInPart[id]
				if m == nil {
					m = map[int]time.Time{}
					firstInPart[id] = m
				}
				if old, ok := m[pn]; !ok || t.Before(old) {
					m[pn] = t
				}
			}
		}
	}
	type dlqKey struct{ token, id string }
	dlq := map[dlqKey]*DLQRec{}
	for i := range h.DLQ {
		d := &h.DLQ[i]
		r.DeadLetters[d.Reason]++
		r.DeadByKind[d.Reason+"/"+d.Kind]++
		dlq[dlqKey{d.Token, d.ID}] = d
	}

	// Connections, and the indexes fan-outs are expanded by.
	var conns []*connView
	byToken := map[string]*connView{}
	byGroup := map[string][]*connView{}
	byUser := map[string][]*connView{}
	for i := range h.Conns {
		c := &h.Conns[i]
		v := &connView{rec: c, name: fmt.Sprintf("c%d.%d %s", c.Client, c.Life, shortToken(c.Token))}
		if e := connects[c.Token]; e != nil {
			v.hasEvent, v.user, v.groups = true, e.User, e.Groups
		} else {
			add(CatHistory, v.name, "no connect event in WS_IN for a connection the client had open")
		}
		for _, cs := range c.Causes {
			if (cs.Kind == ActionClientClose || cs.Kind == FaultEdgeKill) && !v.lossEnd {
				v.lossEnd, v.lossAt, v.lossKind = true, maxTime(cs.At, c.End), cs.Kind
			}
		}
		v.causeKind = causeKind(c)
		if _, dup := byToken[c.Token]; dup {
			add(CatHistory, v.name, "token held by two connections")
			continue
		}
		conns = append(conns, v)
		byToken[c.Token] = v
		for _, g := range v.groups {
			byGroup[g] = append(byGroup[g], v)
		}
		if v.user != "" {
			byUser[v.user] = append(byUser[v.user], v)
		}
		r.Conns++
		if c.Ended {
			r.Ended++
		}
	}

	// expandedBefore says whether a fan-out reached the partition of a
	// connection well before the connection's record was deleted.
	expandedBefore := func(id, token string) string {
		ds := discs[token]
		if parts <= 0 || len(ds) == 0 {
			return ""
		}
		pn := subjects.Partition(token, parts)
		t, ok := firstInPart[id][pn]
		if !ok || !t.Before(ds[0].Stored.Add(-500*time.Millisecond)) {
			return ""
		}
		return fmt.Sprintf("another connection of partition %d received it at %s, the disconnect event was stored at %s", pn, t.Format(timeFmt), ds[0].Stored.Format(timeFmt))
	}

	// reexpanded says whether a fan-out's partition was taken over (a
	// hand-off, or after a crash or cut), from a position at or below it, after the
	// connection's disconnect event was stored: the new owner expanded it
	// again, against a registry the connection had left.
	reexpanded := func(p *PubRec, token string) bool {
		ds := discs[token]
		if parts <= 0 || len(ds) == 0 {
			return false
		}
		pn := subjects.Partition(token, parts)
		for _, t := range h.Takes {
			if t.Partition == pn && t.Position <= p.Seq && t.At.After(ds[0].Stored) {
				return true
			}
		}
		return false
	}

	// What each connection is owed.
	expected := map[*connView][]*PubRec{}
	// When the backends first asked to close each connection: a close
	// can take longer to be pushed than the window that makes it a cause
	// of the end, and what was published after it is not owed to the
	// connection (fan-outs) or is owed a dead letter only (sends).
	closedAt := map[string]time.Time{}
	for _, a := range h.Actions {
		if a.Kind == ActionBackendClose && a.Token != "" {
			if t, ok := closedAt[a.Token]; !ok || a.At.Before(t) {
				closedAt[a.Token] = a.At
			}
		}
	}
	owes := func(p *PubRec, v *connView) bool {
		c := v.rec
		if p.Start.Before(c.Open.Add(ck.FanOutGrace)) {
			return false
		}
		if t, ok := closedAt[c.Token]; ok && !p.Start.Before(t) {
			return false
		}
		return !c.Ended || !p.Ack.After(c.End)
	}
	// addressed says whether a fan-out names the connection at all.
	addressed := func(p *PubRec, v *connView) bool {
		switch p.Kind {
		case KindBroadcast:
			return !slices.Contains(p.Exclude, v.rec.Token)
		case KindGroup:
			return slices.Contains(v.groups, p.Group)
		case KindUser:
			return v.user == p.User
		case KindSend, KindBulk:
			return p.Token == v.rec.Token
		}
		return false
	}
	for i := range h.Pubs {
		p := &h.Pubs[i]
		if p.Seq == 0 || pubs[p.ID] != p {
			continue
		}
		var targets []*connView
		switch p.Kind {
		case KindSend, KindBulk:
			if v := byToken[p.Token]; v != nil {
				expected[v] = append(expected[v], p)
			}
			continue
		case KindBroadcast:
			targets = conns
		case KindGroup:
			targets = byGroup[p.Group]
		case KindUser:
			targets = byUser[p.User]
		default:
			continue
		}
		for _, v := range targets {
			if addressed(p, v) && owes(p, v) {
				expected[v] = append(expected[v], p)
			}
		}
	}

	for _, v := range conns {
		c := v.rec
		if len(c.Bad) > 0 {
			r.Misdelivered += len(c.Bad)
			add(CatMisdelivered, v.name, "%d frames name no message, first %q", len(c.Bad), c.Bad[0])
		}
		// Order and repeats.
		seen := map[string]bool{}
		first := map[string]int{} // frame index of each message's first receipt
		var maxSeq uint64
		var maxID string
		recvAt := func(i int) time.Time {
			if i < len(c.FrameAt) {
				return c.Open.Add(time.Duration(c.FrameAt[i]) * time.Millisecond)
			}
			return time.Time{}
		}
		for i, id := range c.Frames {
			p := pubs[id]
			if p == nil {
				r.Misdelivered++
				add(CatMisdelivered, v.name, "frame %q of no published message", id)
				continue
			}
			if !addressed(p, v) {
				r.Misdelivered++
				add(CatMisdelivered, v.name, "%s (%s) is not addressed to it%s", id, p.Kind, pubTarget(p))
			}
			if seen[id] {
				if ck.Repeat == RepeatLatest && i > 0 && c.Frames[i-1] == id {
					r.AllowedRepeats++
				} else {
					r.Repeats++
					addAt(CatRepeat, v.name, recvAt(i), 20*time.Second, 0, "%s (%s, seq %d) received again at frame %d, after %s", id, p.Kind, p.Seq, i, c.Frames[i-1])
				}
				continue
			}
			seen[id] = true
			first[id] = i
			if p.Seq == 0 {
				continue // no sequence to place it by
			}
			if p.Seq < maxSeq {
				r.OutOfOrder++
				early := ""
				if isFanOut(p.Kind) && p.Start.Before(c.Open) {
					r.OutOfOrderEarly++
					early = fmt.Sprintf("; published %v before the connection opened", c.Open.Sub(p.Start).Round(time.Millisecond))
				}
				addAt(CatOrder, v.name, recvAt(i), 20*time.Second, 0, "%s (%s, seq %d) received after %s (seq %d)%s", id, p.Kind, p.Seq, maxID, maxSeq, early)
			} else {
				maxSeq, maxID = p.Seq, id
			}
		}
		v.maxRecv = maxSeq
		// The connection was there, taking pushes, at least until the
		// latest publish of a message it received began: what it read
		// after that may have been in its socket before the edge let it go.
		var lastRecv time.Time
		for id := range seen {
			if p := pubs[id]; p != nil && p.Start.After(lastRecv) {
				lastRecv = p.Start
			}
		}

		owed := map[string]bool{}
		for _, p := range expected[v] {
			owed[p.ID] = true
			received := seen[p.ID]
			d := dlq[dlqKey{c.Token, p.ID}]
			if d != nil && d.Reason == "gone" && (!c.Ended || d.Stored.Before(lastRecv)) && !afterClose(c, p, closedAt[c.Token]) {
				r.GoneLive++
				addAt(CatGoneLive, v.name, p.Start, 10*time.Second, 10*time.Second, "%s (%s, seq %d) dead-lettered gone (%s) while the connection was there", p.ID, p.Kind, p.Seq, d.Error)
			}
			r.Expected++
			switch {
			case received:
				r.Delivered++
				if d != nil {
					r.ReceivedAndDLQ++
				}
				if t := recvAt(first[p.ID]); !t.IsZero() {
					r.Latency = append(r.Latency, t.Sub(p.Start))
				}
			case d != nil:
			case h.Pending[p.Seq]:
				r.Pending++
			case c.Ended && p.Seq > v.maxRecv && isFanOut(p.Kind) && !v.lossEnd && expandedBefore(p.ID, c.Token) != "" && reexpanded(p, c.Token):
				r.Excused["re-expanded after a takeover"]++
			case c.Ended && p.Seq > v.maxRecv && isFanOut(p.Kind) && !v.lossEnd && expandedBefore(p.ID, c.Token) != "":
				r.Lost++
				addAt(CatLost, v.name, p.Start, 10*time.Second, 10*time.Second,
					"%s (%s, seq %d, published %s) neither received nor dead-lettered, though its partition pushed it while the connection was registered: %s; connection ended %s (%s)",
					p.ID, p.Kind, p.Seq, p.Start.Format(timeFmt), expandedBefore(p.ID, c.Token), c.End.Format(timeFmt), v.causeKind)
				r.Findings[len(r.Findings)-1].Seq = p.Seq
			case c.Ended && p.Seq > v.maxRecv && isFanOut(p.Kind):
				r.Excused[v.causeKind]++
			case c.Ended && p.Seq > v.maxRecv && v.lossEnd && !p.Start.After(v.lossAt):
				r.Excused[v.lossKind]++
			default:
				r.Lost++
				state := "open to the end"
				if c.Ended {
					state = fmt.Sprintf("ended %s (%s), last received seq %d", c.End.Format(timeFmt), v.causeKind, v.maxRecv)
				}
				addAt(CatLost, v.name, p.Start, 10*time.Second, 10*time.Second, "%s (%s, seq %d, published %s, acked %s) neither received nor dead-lettered; connection opened %s, %s",
					p.ID, p.Kind, p.Seq, p.Start.Format(timeFmt), p.Ack.Format(timeFmt), c.Open.Format(timeFmt), state)
				r.Findings[len(r.Findings)-1].Seq = p.Seq
			}
		}
		// The excused tail, for the summary: how many at most one end cost.
		tail := 0
		for _, p := range expected[v] {
			if c.Ended && p.Seq > v.maxRecv && !seen[p.ID] && dlq[dlqKey{c.Token, p.ID}] == nil {
				tail++
			}
		}
		r.MaxExcusedTail = max(r.MaxExcusedTail, tail)
		for id := range seen {
			if p := pubs[id]; p != nil && isFanOut(p.Kind) && !owed[id] {
				r.Extra++
			}
		}

		// Disconnect events.
		ds := discs[c.Token]
		if c.Ended {
			reasons := r.ReasonsByCause[v.causeKind]
			if reasons == nil {
				reasons = map[string]int{}
				r.ReasonsByCause[v.causeKind] = reasons
			}
			for _, d := range ds {
				reasons[d.Reason]++
			}
			if len(ds) != 1 {
				r.DisconnectBad++
				addAt(CatDisconnect, v.name, c.End, 10*time.Second, 10*time.Second, "ended %s (%s) with %d disconnect events %s, want 1", c.End.Format(timeFmt), v.causeKind, len(ds), reasonList(ds))
			}
		} else if len(ds) != 0 {
			r.DisconnectBad++
			add(CatDisconnect, v.name, "still open, but has %d disconnect events %s", len(ds), reasonList(ds))
		}
	}
	// Connections registered whose clients never had them.
	for tok, e := range connects {
		if byToken[tok] != nil {
			continue
		}
		r.Phantoms++
		ds := discs[tok]
		name := fmt.Sprintf("%s %s", strings.Join(e.Protocols, ","), shortToken(tok))
		reasons := r.ReasonsByCause["never-opened"]
		if reasons == nil {
			reasons = map[string]int{}
			r.ReasonsByCause["never-opened"] = reasons
		}
		for _, d := range ds {
			reasons[d.Reason]++
		}
		if len(ds) != 1 {
			r.DisconnectBad++
			add(CatDisconnect, name, "registered (connect event seq %d) but its client never had it; %d disconnect events %s, want 1", e.Seq, len(ds), reasonList(ds))
		}
	}

	// Processes: every exit that no fault asked for, and the health at the end.
	for _, p := range h.Procs {
		switch {
		case p.Event == "exit" && !p.Intended && p.Ready:
			r.ProcsBad++
			add(CatProcess, p.Name, "exited (code %d) at %s without being asked to; log %s", p.Code, p.At.Format(timeFmt), p.Log)
		case p.Event == "exit" && !p.Intended:
			r.ProcStartFails++
		case p.Event == "health" && p.Detail != "ok":
			r.ProcsBad++
			add(CatProcess, p.Name, "unhealthy at the end: %s; log %s", p.Detail, p.Log)
		}
	}
	for _, f := range h.Faults {
		c := r.FaultsByKind[f.Kind]
		switch f.Phase {
		case "start":
			c[0]++
		case "end":
			c[1]++
		case "skip":
			c[2]++
		}
		r.FaultsByKind[f.Kind] = c
	}
	if h.Drain != nil {
		r.Drained, r.DrainDetail = h.Drain.Drained, h.Drain.Detail
		if !h.Drain.Drained {
			add(CatDrain, "", "WS_OUT not drained within the settle bound: %d messages left, %d owed deliveries among them (%s)", h.Drain.OutMsgs, r.Pending, h.Drain.Detail)
		}
	}
	sort.SliceStable(r.Findings, func(i, j int) bool { return r.Findings[i].Category < r.Findings[j].Category })
	slices.Sort(r.Latency)
	for _, f := range r.Findings {
		kinds := map[string]bool{}
		for _, n := range f.Near {
			kinds[strings.Fields(n)[1]] = true
		}
		if len(kinds) == 0 {
			r.ByFault["none"]++
		}
		for k := range kinds {
			r.ByFault[k]++
		}
	}
	return r
}

// faultSpans returns a function listing the faults in progress at any
// time between from and to ("#N kind target").
func faultSpans(recs []FaultRec) func(from, to time.Time) []string {
	type span struct {
		name       string
		start, end time.Time
	}
	byN := map[int]*span{}
	var spans []*span
	for _, f := range recs {
		switch f.Phase {
		case "start":
			s := &span{name: fmt.Sprintf("#%d %s %s", f.N, f.Kind, f.Target), start: f.At, end: f.At.Add(time.Hour)}
			byN[f.N] = s
			spans = append(spans, s)
		case "end":
			if s := byN[f.N]; s != nil {
				s.end = f.At
			}
		}
	}
	return func(from, to time.Time) []string {
		var out []string
		for _, s := range spans {
			if !s.start.After(to) && !s.end.Before(from) {
				out = append(out, s.name)
			}
		}
		return out
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// afterClose says whether p was published after a backend close of c
// (closed, when the backends first asked; or one among its causes), which
// a connection still open at the end may have on its way.
func afterClose(c *ConnRec, p *PubRec, closed time.Time) bool {
	if !closed.IsZero() && !p.Start.Before(closed) {
		return true
	}
	for _, cs := range c.Causes {
		if cs.Kind == ActionBackendClose && !p.Start.Before(cs.At) {
			return true
		}
	}
	return false
}

// causeKind names how a connection ended: the runner's first cause, or
// "unprompted" when the connection ended with nothing done to it.
func causeKind(c *ConnRec) string {
	if !c.Ended {
		return "open"
	}
	if len(c.Causes) == 0 {
		return "unprompted"
	}
	return c.Causes[0].Kind
}

func pubTarget(p *PubRec) string {
	switch p.Kind {
	case KindGroup:
		return " (group " + p.Group + ")"
	case KindUser:
		return " (user " + p.User + ")"
	case KindBroadcast:
		return " (excluded)"
	}
	return " (token " + shortToken(p.Token) + ")"
}

func reasonList(ds []EventRec) string {
	var rs []string
	for _, d := range ds {
		rs = append(rs, d.Reason)
	}
	return "[" + strings.Join(rs, " ") + "]"
}

func shortToken(t string) string {
	if len(t) > 16 {
		return t[:8] + "…" + t[len(t)-6:]
	}
	return t
}

const timeFmt = "15:04:05.000"
