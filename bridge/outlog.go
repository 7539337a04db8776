package bridge

import (
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// The outbound log: WS_OUT republishes the headers of every message it
// stores to P.outlog.<stored subject> (subjects.Names.OutLog), in stream
// order, on the same internal queue that carries its consumers'
// deliveries. On a single-replica stream (its consumers live beside it),
// whatever the log said of sequences before m is therefore on this
// connection before a consumer's delivery of m: when a partition's direct
// send m waits for proof that no older fan-out is still to come, the log
// gives it without a round trip. The stream numbers what it stores without
// holes and logs all of it, so a gap (a reconnect, a slow-consumer drop) is
// seen, and the log covers only what it saw without one; the probes cover
// the rest (intake.go).

// outLogKeep bounds the fan-out sequences the log remembers; past it the
// older half is forgotten and the log covers less.
const outLogKeep = 1 << 16

type outLog struct {
	// every and zero are the fan-out consumers' filter subjects: those
	// of every partition but 0 (all alike), and partition 0's.
	every, zero []string
	sub         *nats.Subscription
	ch          chan *nats.Msg
	quit        chan struct{}
	done        chan struct{}

	mu          sync.Mutex
	first, last uint64 // the log saw every sequence in [first, last]
	// fan are the fan-out sequences in [first, last], ascending; fan0
	// marks those only partition 0 reads (malformed, four tokens or more).
	fan  []uint64
	fan0 []bool
}

func newOutLog(nc *nats.Conn, names subjects.Names) (*outLog, error) {
	l := newOutLogState(names)
	sub, err := nc.ChanSubscribe(names.OutLog(), l.ch)
	if err != nil {
		return nil, err
	}
	// A full channel drops; the gap shows in the next sequence.
	_ = sub.SetPendingLimits(1<<16, 64<<20)
	l.sub = sub
	go l.keepDraining()
	return l, nil
}

// newOutLogState is the log before it follows anything.
func newOutLogState(names subjects.Names) *outLog {
	return &outLog{every: names.FanOutFilters(1), zero: names.FanOutFilters(0),
		ch: make(chan *nats.Msg, 1<<16), quit: make(chan struct{}), done: make(chan struct{})}
}

// keepDraining takes in what came even while no partition asks, so the
// channel never fills. It drains under the lock, as clearTo does, so the
// log takes the messages in the order they came.
func (l *outLog) keepDraining() {
	defer close(l.done)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-l.quit:
			return
		case <-t.C:
			l.mu.Lock()
			l.drainLocked()
			l.mu.Unlock()
		}
	}
}

func (l *outLog) close() {
	_ = l.sub.Unsubscribe()
	close(l.quit)
	<-l.done
}

// drainLocked takes in what came.
func (l *outLog) drainLocked() {
	for {
		select {
		case m := <-l.ch:
			l.addLocked(m)
		default:
			return
		}
	}
}

func (l *outLog) addLocked(m *nats.Msg) {
	seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
	if err != nil || seq == 0 {
		return
	}
	if l.last == 0 || seq != l.last+1 {
		// The first, or after a gap (every stored message is logged, and
		// the stream numbers them without holes): cover from here on.
		l.first, l.fan, l.fan0 = seq, l.fan[:0], l.fan0[:0]
	}
	l.last = seq
	fan, only0 := l.isFanOut(m.Header.Get("Nats-Subject"))
	if !fan {
		return
	}
	if len(l.fan) >= outLogKeep {
		half := len(l.fan) / 2
		l.first = l.fan[half-1] + 1
		l.fan = append(l.fan[:0], l.fan[half:]...)
		l.fan0 = append(l.fan0[:0], l.fan0[half:]...)
	}
	l.fan = append(l.fan, seq)
	l.fan0 = append(l.fan0, only0)
}

// isFanOut reports whether a stored subject is read by the fan-out
// consumers, and whether by partition 0's alone.
func (l *outLog) isFanOut(subject string) (fan, only0 bool) {
	matches := func(filters []string) bool {
		return slices.ContainsFunc(filters, func(f string) bool { return server.SubjectMatchesFilter(subject, f) })
	}
	switch {
	case matches(l.every):
		return true, false
	case matches(l.zero):
		return true, true
	}
	return false, false
}

// clearTo answers, for partition p, up to where no fan-out comes after
// from: the sequence before the first fan-out at or after from, or the last
// sequence the log saw. ok is false when the log does not cover from.
func (l *outLog) clearTo(from uint64, p int) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drainLocked()
	if l.last == 0 || from < l.first || from > l.last+1 {
		return 0, false
	}
	i, _ := slices.BinarySearch(l.fan, from)
	for ; i < len(l.fan); i++ {
		if !l.fan0[i] || p == 0 {
			return l.fan[i] - 1, true
		}
	}
	return l.last, true
}
