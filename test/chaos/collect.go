package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// collect reads back what the streams hold: every connect and disconnect
// event in WS_IN (JetStream keeps them, so none is missed, whoever
// published it) and every dead letter in WS_DLQ.
func (r *Runner) collect(ctx context.Context) error {
	n := r.names
	var connects, discs, dlqs int
	err := r.readStream(ctx, n.StreamIn(), []string{n.InboundKind(subjects.KindConnect), n.InboundKind(subjects.KindDisconnect)},
		func(m jetstream.Msg, seq uint64, at time.Time) {
			s, err := n.Parse(m.Subject())
			if err != nil {
				r.logf("WS_IN: %v", err)
				return
			}
			switch s.Kind {
			case subjects.KindConnect:
				var ce subjects.ConnectEvent
				if err := json.Unmarshal(m.Data(), &ce); err != nil {
					r.logf("WS_IN connect event seq %d: %v", seq, err)
				}
				connects++
				r.hist.add(EventRec{T: "connect", Token: s.Token, ConnID: ce.ConnectionID, User: ce.UserID, Groups: ce.Groups,
					Protocols: ce.Protocols, Stored: at, Seq: seq})
			case subjects.KindDisconnect:
				var de subjects.DisconnectEvent
				if err := json.Unmarshal(m.Data(), &de); err != nil {
					r.logf("WS_IN disconnect event seq %d: %v", seq, err)
				}
				discs++
				r.hist.add(EventRec{T: "disconnect", Token: s.Token, ConnID: de.ConnectionID, Reason: de.Reason, Stored: at, Seq: seq})
			}
		})
	if err != nil {
		return err
	}
	err = r.readStream(ctx, n.StreamDLQ(), []string{n.DeadLetters()}, func(m jetstream.Msg, seq uint64, at time.Time) {
		rec := DLQRec{T: "dlq", Stored: at, Seq: seq}
		if s, err := n.Parse(m.Subject()); err == nil {
			rec.Kind, rec.Token = string(s.Kind), s.Token
		} else {
			rec.Kind = m.Subject()
		}
		h := m.Headers()
		rec.Reason, rec.Error, rec.Status = h.Get(subjects.HeaderReason), h.Get(subjects.HeaderError), h.Get(subjects.HeaderStatus)
		body := m.Data()
		rec.ID, _, _ = strings.Cut(string(body[:min(len(body), 64)]), " ")
		if rec.ID == "" {
			// A close has no body: its id is only in the original
			// message id, which the dead letter replaced; the subject
			// says what it was.
			rec.ID = "(" + h.Get(subjects.HeaderSubject) + ")"
		}
		dlqs++
		r.hist.add(rec)
	})
	if err != nil {
		return err
	}
	r.logf("read back %d connect events, %d disconnect events, %d dead letters", connects, discs, dlqs)
	takes := 0
	for _, b := range r.bridges {
		for _, t := range readTakes(b.proc.log, b.proc.name) {
			r.hist.add(t)
			takes++
		}
	}
	r.logf("read %d partition takeovers from the bridges' logs", takes)
	if h := r.hist.history(); h.Drain != nil && !h.Drain.Drained {
		r.pendingSeqs(ctx)
	}
	return nil
}

// pendingSeqs records which commands WS_OUT has not resolved, after a
// settle that did not drain: a preliminary check names the owed messages
// neither received nor dead-lettered, and those at or past the lowest
// partition position are still to come.
func (r *Runner) pendingSeqs(ctx context.Context) {
	rep := Checker{Repeat: r.cfg.Repeat, FanOutGrace: r.cfg.FanOutGrace}.Check(r.hist.history())
	seqs := map[uint64]bool{}
	for _, f := range rep.Findings {
		if f.Category == CatLost && f.Seq > 0 && len(seqs) < 5000 {
			seqs[f.Seq] = true
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := r.js.Stream(ctx, r.names.StreamOut())
	if err != nil {
		r.logf("WS_OUT: %v", err)
		return
	}
	info := st.CachedInfo()
	kv, err := r.js.KeyValue(ctx, r.names.Positions())
	if err != nil {
		r.logf("positions: %v", err)
		return
	}
	// Not resolved yet: at or past the lowest position of every partition
	// (the log keeps resolved commands for its replay window too).
	low, err := subjects.LowestPosition(ctx, kv, r.names.OutPartitions(info.Config), info)
	if err != nil {
		r.logf("positions: %v", err)
		return
	}
	var held []uint64
	for seq := range seqs {
		if seq >= low {
			held = append(held, seq)
		}
	}
	r.logf("%d of %d owed messages not delivered are still in WS_OUT", len(held), len(seqs))
	r.hist.add(PendingRec{T: "pending", Seqs: held})
}

// readStream hands every message of stream matching filters to each, in
// stream order, with its sequence and store time. A fetch that fails (a
// busy server: tens of thousands of dead letters are read here) is taken
// up again after the last message read, until ten tries in a row read
// nothing or the bound of three minutes passes.
func (r *Runner) readStream(ctx context.Context, stream string, filters []string, each func(m jetstream.Msg, seq uint64, at time.Time)) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var next uint64 // first sequence not read yet (0: from the start)
	var lastErr error
	// Ten tries in a row without progress; a try that read something
	// starts the count again.
	for try := 0; try < 10; try++ {
		from := next
		if try > 0 {
			r.logf("reading %s again from sequence %d: %v", stream, next, lastErr)
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: %w (last: %v)", stream, ctx.Err(), lastErr)
			case <-time.After(time.Second):
			}
		}
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: filters}
		if next > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, next
		}
		cons, err := r.js.OrderedConsumer(ctx, stream, cfg)
		if err != nil {
			lastErr = err
			continue
		}
		info, err := cons.Info(ctx)
		if err != nil {
			lastErr = err
			continue
		}
		left := int(info.NumPending)
		for left > 0 && err == nil {
			var batch jetstream.MessageBatch
			batch, err = cons.Fetch(min(left, 500), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				break
			}
			for m := range batch.Messages() {
				md, merr := m.Metadata()
				if merr != nil {
					err = merr
					break
				}
				each(m, md.Sequence.Stream, md.Timestamp)
				next = md.Sequence.Stream + 1
				left--
			}
			if err == nil {
				err = batch.Error()
			}
		}
		if err == nil {
			return nil
		}
		lastErr = err
		if next > from {
			try = 0
		}
	}
	return fmt.Errorf("%s: %w", stream, lastErr)
}

// readTakes reads the partitions a bridge took over from crashed or cut
// owners from its log (text lines: time=… msg="partition taken"
// partition=N … position=S).
func readTakes(path, name string) []TakeRec {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []TakeRec
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="partition taken"`) {
			continue
		}
		t := TakeRec{T: "take", Bridge: name, Partition: -1}
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "time":
				t.At, _ = time.Parse(time.RFC3339Nano, v)
			case "partition":
				t.Partition, _ = strconv.Atoi(v)
			case "position":
				t.Position, _ = strconv.ParseUint(v, 10, 64)
			}
		}
		if !t.At.IsZero() && t.Partition >= 0 {
			out = append(out, t)
		}
	}
	return out
}
