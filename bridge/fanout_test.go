package bridge

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestFanOutKeepsItsPlace interleaves broadcasts, group sends and direct
// sends with three bridges working the partitions: every connection gets
// exactly the messages meant for it, each once, in publish order.
func TestFanOutKeepsItsPlace(t *testing.T) {
	e := newEnv(t, nil)
	mt := newMultiTarget(t, 2*time.Millisecond)
	const conns = 40
	var ids []string
	for c := 0; c < conns; c++ {
		ids = append(ids, fmt.Sprintf("m%d", c))
	}
	e.registerEvents(func(ev *subjects.ConnectEvent) {
		if n, _ := strconv.Atoi(ev.ConnectionID[1:]); n%2 == 0 {
			ev.Groups = []string{"even"}
		}
	}, ids...)
	var bridges []*Bridge
	var drops atomic.Int64
	for _, name := range []string{"a", "b", "c"} {
		bridges = append(bridges, startBridge(t, Options{PushURL: mt.srv.URL + "/" + name + "/api", Concurrency: 16}, Deps{Conn: connect(t, e.s), Logger: countingLogger(t, &drops)}))
	}
	// Bounded rendezvous: 10 or 11 of the 32 partitions each.
	waitFor(t, "the partitions to spread evenly over the three bridges", 30*time.Second, func() bool {
		n := 0
		for _, b := range bridges {
			if k := len(b.Owned()); k < 10 || k > 11 {
				return false
			}
			n += len(b.Owned())
		}
		return n == subjects.DefaultPartitions
	})
	want := publishInterleaved(e, ids)
	total := 0
	for _, w := range want {
		total += len(w)
	}
	waitFor(t, "every push", 60*time.Second, func() bool { return len(mt.all()) >= total })
	waitFor(t, "every command resolved", 30*time.Second, e.resolved)
	got := map[string][]int{}
	by := map[string]int{}
	for _, p := range mt.all() {
		got[p.conn] = append(got[p.conn], p.n)
		by[p.bridge]++
	}
	dups := 0
	for _, id := range ids {
		dups += checkWindows(t, id, got[id], want[id], int(drops.Load()))
	}
	t.Logf("%d pushes by bridge %v; %d repeats after %d partitions dropped", total, by, dups, drops.Load())
}

// publishInterleaved publishes 30 rounds of a send to each connection
// followed by a broadcast (excluding m1), a group command (to "even") or
// nothing, and returns what each connection must get, in order.
func publishInterleaved(e *env, ids []string) map[string][]int {
	want := map[string][]int{}
	n := 0
	for round := 0; round < 30; round++ {
		for _, id := range ids {
			n++
			e.publish(e.names.Send(subjects.Token(id)), []byte(strconv.Itoa(n)))
			want[id] = append(want[id], n)
		}
		n++
		switch round % 3 {
		case 0:
			e.publish(e.names.Broadcast(), []byte(strconv.Itoa(n)), subjects.HeaderExclude, subjects.Token("m1"))
			for _, id := range ids {
				if id != "m1" {
					want[id] = append(want[id], n)
				}
			}
		case 1:
			e.publish(e.names.Group("even"), []byte(strconv.Itoa(n)))
			for i, id := range ids {
				if i%2 == 0 {
					want[id] = append(want[id], n)
				}
			}
		}
	}
	return want
}

// The same, from a backlog: everything is stored before the one bridge
// starts, so its partitions' direct and fan-out consumers deliver in
// batches and the merge works from its watermarks, not one by one.
func TestFanOutKeepsItsPlaceInABacklog(t *testing.T) {
	e := newEnv(t, nil)
	mt := newMultiTarget(t, 0)
	var ids []string
	for c := 0; c < 40; c++ {
		ids = append(ids, fmt.Sprintf("m%d", c))
	}
	e.registerEvents(func(ev *subjects.ConnectEvent) {
		if n, _ := strconv.Atoi(ev.ConnectionID[1:]); n%2 == 0 {
			ev.Groups = []string{"even"}
		}
	}, ids...)
	if err := subjects.Provision(context.Background(), e.js, e.names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	want := publishInterleaved(e, ids)
	total := 0
	for _, w := range want {
		total += len(w)
	}
	var drops atomic.Int64
	b := startBridge(t, Options{PushURL: mt.srv.URL + "/a/api", Concurrency: 16}, Deps{Conn: connect(t, e.s), Logger: countingLogger(t, &drops)})
	// Positions made all the time, as the commit loop makes them, while
	// fan-outs are taken: a command must be whole once it is held (the
	// race detector sees one that is not).
	stop := make(chan struct{})
	positions := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				positions <- n
				return
			default:
			}
			if ps := b.partList.Load(); ps != nil {
				for _, p := range *ps {
					if _, ok := p.position(); ok {
						n++
					}
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	waitFor(t, "every push", 60*time.Second, func() bool { return len(mt.all()) >= total })
	waitFor(t, "every command resolved", 30*time.Second, e.resolved)
	close(stop)
	if n := <-positions; n == 0 {
		t.Error("no position was made while the fan-outs were taken")
	}
	got := map[string][]int{}
	for _, p := range mt.all() {
		got[p.conn] = append(got[p.conn], p.n)
	}
	for _, id := range ids {
		checkWindows(t, id, got[id], want[id], int(drops.Load()))
	}
}
