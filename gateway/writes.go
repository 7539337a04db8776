package gateway

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Sources of the writes whose results tell whether JetStream takes what
// this instance hands it.
const (
	writeEvents   = iota // what the functions store: connect, message and disconnect events, registry records
	writeInstance        // the edge instance's record, refreshed every third of its TTL
	writeSources
)

var writeSourceNames = [writeSources]string{"events", "instance record"}

// refusalHold is how long one refused write keeps the instance not ready
// when no write of its kind succeeds since: a balancer sends no new
// clients to an instance that is not ready, so without an end the
// instance would stay out until an old client wrote again. The instance
// record is written every few seconds, so while the store refuses every
// write the instance stays not ready.
const refusalHold = 10 * time.Second

// writeHealth is what the instance's own recent writes say about
// JetStream: not ready while the last write of a kind was refused for want
// of room (a full store, a stream at its bound refusing new messages, an
// account at its limit, no stream answering), ready again once one
// succeeds (any write at all, when the refusal was the whole store's or
// account's). It costs a load on the path of a write that succeeds and
// nothing per /readyz request beyond reading it.
type writeHealth struct {
	src [writeSources]struct {
		refused atomic.Int64           // g.since() of the last refusal not followed by a success; 0: none
		why     atomic.Pointer[string] // that refusal's error
		// wide: the refusal was the whole store's or account's (no room
		// anywhere), so a success of any source ends it; a stream's own
		// refusal ends with a success of its source.
		wide atomic.Bool
	}
}

// observe records the outcome of a write of source at now (g.since()):
// a success clears a refusal, a refusal for want of room is kept, any
// other error (a timeout, a bad event) says nothing about room.
func (w *writeHealth) observe(source int, now int64, err error) {
	s := &w.src[source]
	if err == nil {
		for i := range w.src {
			o := &w.src[i]
			if o.refused.Load() != 0 && (i == source || o.wide.Load()) {
				o.refused.Store(0)
			}
		}
		return
	}
	refused, wide := refusesWrites(err.Error(), err)
	if !refused {
		return
	}
	why := err.Error()
	s.why.Store(&why)
	s.wide.Store(wide)
	s.refused.Store(max(now, 1))
}

// observeReply records the outcome of a registration from its reply: errNo
// 0 stored the connect event and the record, an errNo of 500 or more may
// say why they were not.
func (w *writeHealth) observeReply(now int64, errNo int, msg string) {
	switch {
	case errNo == 0:
		w.observe(writeEvents, now, nil)
	case errNo >= 500:
		w.observe(writeEvents, now, errors.New(msg))
	}
}

// check reports the latest refusal held (within refusalHold of now), or
// nil.
func (w *writeHealth) check(now int64) error {
	var errs []string
	for i := range w.src {
		s := &w.src[i]
		at := s.refused.Load()
		if at == 0 || now-at >= int64(refusalHold) {
			continue
		}
		why := ""
		if p := s.why.Load(); p != nil {
			why = *p
		}
		errs = append(errs, fmt.Sprintf("JetStream refuses writes (%s, %v ago): %s",
			writeSourceNames[i], time.Duration(now-at).Round(time.Millisecond), clipReason(why)))
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// clipReason keeps a refusal short enough for a /readyz answer.
func clipReason(s string) string {
	const most = 300
	if len(s) > most {
		return s[:most] + "…"
	}
	return s
}

// JetStream's error codes of a write refused for want of room, and
// whether the refusal is the whole store's or account's (true) or one
// stream's.
var refusalCodes = map[jetstream.ErrorCode]bool{
	10002: true,  // resource limits exceeded for account
	10023: true,  // insufficient resources
	10028: true,  // insufficient memory resources available
	10047: true,  // insufficient storage resources available
	10077: false, // the stream could not store it: its maximum bytes or messages exceeded
}

// refusalTexts are the same refusals as they read in an error that
// crossed a process boundary (a function binary's answer), where only the
// text is left, and whether each is the whole store's.
var refusalTexts = []struct {
	text string
	wide bool
}{
	{"insufficient resources", true},
	{"insufficient storage resources", true},
	{"insufficient memory resources", true},
	{"resource limits exceeded", true},
	{"maximum bytes exceeded", false},
	{"maximum messages exceeded", false},
	{"no response from stream", false},
}

// refusesWrites reports whether err says JetStream refused a write for
// want of room or of a stream to take it, and whether for want of room in
// the whole store (or account). text is err's text.
func refusesWrites(text string, err error) (refused, wide bool) {
	if apiErr := (*jetstream.APIError)(nil); errors.As(err, &apiErr) {
		if wide, ok := refusalCodes[apiErr.ErrorCode]; ok {
			return true, wide
		}
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true, false
	}
	text = strings.ToLower(text)
	for _, r := range refusalTexts {
		if strings.Contains(text, r.text) {
			return true, r.wide
		}
	}
	return false, false
}
