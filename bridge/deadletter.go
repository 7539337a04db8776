package bridge

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// reject dead-letters a whole command that will never be pushed. The dead
// letter is published from the lane of its connection (or of the
// partition's invalid commands), like any other outcome, so a publish that
// fails is retried in order.
func (b *Bridge) reject(d *delivery, kind subjects.Kind, token string, class Class, cause error) {
	d.kind = kind
	d.remaining.Store(1)
	reason := Decide(Outcome{Class: class, Err: cause}, 0, b.policy, 0).Reason
	d.one = item{d: d, token: token, dl: &pendingDL{reason: reason, o: Outcome{Err: cause}}}
	b.enqueue(&d.one)
}

// pendingDL is the dead letter an item's outcome calls for.
type pendingDL struct {
	reason   string
	o        Outcome
	attempts int  // push attempts made
	gone     bool // forget the connection once dead-lettered
	tries    int  // failed publishes of the dead letter
	minimal  bool // publish the metadata only (the full one was refused)
}

// finish publishes the item's dead letter. When the publish fails, the item
// stays at the head of its lane and the publish is retried after a backoff,
// like a transient push failure, so later messages to the connection keep
// waiting behind it (abandoning the lane would let newer messages to the
// connection start a new lane and overtake it). A stop gives the lane back
// to JetStream as usual.
func (b *Bridge) finish(it *item) (attemptResult, time.Duration) {
	p := it.dl
	if err := b.deadLetter(it.d, it.d.kind, it.token, p.reason, p.o, p.attempts, p.minimal); err != nil {
		p.tries++
		if !transientPublishErr(err) {
			// Retrying gives the same answer. Keep the metadata only
			// (subject, reason, status, sizes); when even that is refused,
			// the log line and the counter are all that is left, and the
			// lane moves on.
			if !p.minimal {
				p.minimal = true
				return b.finish(it)
			}
			b.log.Error("dead letter refused; lost", "seq", it.d.seq, "token", it.token, "kind", it.d.kind,
				"reason", p.reason, "status", p.o.Status, "subject", clipString(it.d.msg.Subject(), 256), "err", err)
			return b.dlDone(it, p)
		}
		delay := b.policy.Backoff(p.tries, rand.Float64())
		b.log.Error("dead letter failed; retrying", "seq", it.d.seq, "token", it.token,
			"tries", p.tries, "delay", delay, "err", err)
		return retry, delay
	}
	return b.dlDone(it, p)
}

// dlDone resolves an item whose dead letter is published (or lost for
// good): a gone connection is forgotten, a close that failed unmarked.
func (b *Bridge) dlDone(it *item, p *pendingDL) (attemptResult, time.Duration) {
	it.dl = nil
	if p.gone {
		b.forget(it.token, disconnectReason(p.o))
	} else if it.close {
		b.unmarkClosing(it.token)
	}
	return resolved, 0
}

// deadLetter republishes the message, for one connection, to the dead-letter
// stream with why it failed, and waits for the stream's ack. The original
// Nats-Msg-Id is replaced: a fan-out's dead letters share it and would be
// de-duplicated into one; the new id de-duplicates redeliveries instead.
// minimal keeps only the Ws-* metadata and connection id, without the
// original body and headers.
func (b *Bridge) deadLetter(d *delivery, kind subjects.Kind, token, reason string, o Outcome, attempts int, minimal bool) error {
	id, err := subjects.ConnID(token)
	if err != nil {
		token = "" // never a subject from a bad token: P.dlq.<kind>
	}
	h := nats.Header{}
	errText := "unknown"
	if o.Err != nil {
		errText = clipString(o.Err.Error(), 512)
	}
	h.Set(subjects.HeaderError, errText)
	h.Set(subjects.HeaderAttempts, strconv.Itoa(attempts))
	h.Set(subjects.HeaderStatus, strconv.Itoa(o.Status))
	h.Set(subjects.HeaderSubject, d.orig)
	h.Set(subjects.HeaderReason, reason)
	h.Set(subjects.HeaderMsgID, "dlq-"+strconv.FormatUint(d.seq, 10)+"-"+token)
	if token != "" {
		h.Set(subjects.HeaderConnID, id)
	}
	subj := b.names.DeadLetter(kind, token)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Cut to fit: a body just under max_payload plus the headers would
	// not, and its publish would fail forever.
	maxPayload := b.nc.MaxPayload()
	if minimal {
		maxPayload = 0 // nothing of the original fits
	}
	dl := deadLetterMsg(subj, d.msg.Data(), deadLetterHeaders(d.msg.Headers()), h, maxPayload)
	if _, err := b.js.PublishMsg(ctx, dl); err != nil {
		b.m.DeadLetterFailures.Inc()
		return fmt.Errorf("publish dead letter %s: %w", subj, err)
	}
	b.m.DeadLetters.WithLabelValues(reason).Inc()
	b.log.Warn("dead letter", "kind", kind, "token", token, "reason", reason, "status", o.Status,
		"attempts", attempts, "seq", d.seq, "err", errText)
	return nil
}

// HeaderOrigPrefix renames, in a dead letter, the headers of the original
// command in NATS's reserved Nats- namespace: Ws-Orig-Nats-Msg-Id,
// Ws-Orig-Nats-Expected-Stream, and so on.
const HeaderOrigPrefix = "Ws-Orig-"

// deadLetterHeaders returns the original command's headers as its dead
// letter carries them: every one named Nats-… (in any case) is renamed
// HeaderOrigPrefix+name, the others are kept as they are. JetStream acts on
// the Nats- headers of a publish: conditions (Nats-Expected-Stream,
// Nats-Expected-Last-Sequence, -Last-Subject-Sequence, -Last-Msg-Id),
// Nats-Rollup, Nats-TTL, Nats-Marker-Reason, counters (Nats-Incr), atomic
// batches (Nats-Batch-*), schedules (Nats-Schedule*),
// Nats-Required-Api-Level, tracing (Nats-Trace-*), and whatever a later
// server adds. Copied, a condition the command met on WS_OUT fails on
// WS_DLQ (Nats-Expected-Stream: WS_OUT is refused with error 10060) and
// the dead letter lost its body; a rollup would purge other dead letters,
// a TTL expire this one. Renamed, they stay visible and do nothing.
func deadLetterHeaders(orig nats.Header) nats.Header {
	out := make(nats.Header, len(orig))
	for k, v := range orig {
		if len(k) >= 5 && strings.EqualFold(k[:5], "Nats-") {
			k = HeaderOrigPrefix + k
		}
		out[k] = v
	}
	return out
}

// forget ends a connection whose push found it gone, or that a push
// closed: it leaves the index at once (the rest of its backlog is answered
// gone), and its end is announced after endGrace unless its own cleanup
// did it first (see ends).
func (b *Bridge) forget(token, reason string) {
	if held := b.idx.remove(token); !held && (reason == subjects.ReasonGone || reason == subjects.ReasonLost) {
		// Every message queued for a gone connection is answered gone;
		// the first one forgot it (the index follows the registry).
		b.log.Debug("gone connection already forgotten", "token", token)
		return
	}
	b.ends.add(token, reason)
}

// announce deletes a connection's registry record and publishes its
// disconnect event, if the record is still there: whoever deletes the
// record announces the disconnect (subjects.Names.Forget), so a connection
// gets one event however many messages, instances or cleanup invocations
// see its end. Best effort (SPEC §3): failures are logged, the registry TTL
// is the safety net.
func (b *Bridge) announce(ctx context.Context, token, reason string) {
	announced, err := b.names.Forget(ctx, b.js, b.kv, token, reason, time.Now())
	switch {
	case err != nil:
		b.log.Warn("disconnect not recorded", "token", token, "reason", reason, "err", err)
	case announced == "":
		b.log.Debug("connection already forgotten", "token", token, "reason", reason)
	}
}
