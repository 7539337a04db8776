package bridge

import (
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestOutLogCovers feeds the log what WS_OUT republishes and checks what
// it claims: only what it saw without a gap, and every fan-out in it.
func TestOutLogCovers(t *testing.T) {
	l := newOutLogState(subjects.MustNew("ws"))
	add := func(seq uint64, subject string) {
		m := &nats.Msg{Header: nats.Header{}}
		m.Header.Set("Nats-Sequence", strconv.FormatUint(seq, 10))
		m.Header.Set("Nats-Subject", subject)
		l.ch <- m
	}
	check := func(from uint64, p int, wantTo uint64, wantOK bool) {
		t.Helper()
		to, ok := l.clearTo(from, p)
		if to != wantTo || ok != wantOK {
			t.Errorf("clearTo(%d, partition %d) = %d, %v; want %d, %v", from, p, to, ok, wantTo, wantOK)
		}
	}
	check(1, 0, 0, false) // saw nothing
	add(10, "ws.out.send.3.dA")
	add(11, "ws.out.broadcast")
	add(12, "ws.out.send.1.dB")
	add(13, "ws.out.group.5.g")
	add(14, "ws.out.send.a.b.c") // malformed: partition 0's
	add(15, "ws.out.user.2.u")
	check(9, 1, 0, false)       // before what it saw
	check(10, 1, 10, true)      // the broadcast at 11 is next
	check(12, 1, 12, true)      // the group command at 13
	check(14, 1, 14, true)      // the malformed one is not partition 1's: the user command at 15
	check(14, 0, 13, true)      // but it is partition 0's
	check(16, 1, 15, true)      // nothing after what it saw
	check(17, 1, 0, false)      // past it
	add(17, "ws.out.send.3.dC") // 16 never came: a gap
	check(16, 1, 0, false)
	check(17, 1, 17, true)
	add(18, "ws.out.close.3.dC")
	check(17, 2, 18, true)
}
