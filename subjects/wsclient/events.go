package wsclient

import (
	"fmt"
	"sync"

	"github.com/coder/websocket"
)

// EventKind says what happened to the client's session.
type EventKind int

// The events, in the order a client's life can show them: Open once, then
// any number of Resumed and of Reset (each Reset followed by an Open for the
// new session), then Closed once, last.
const (
	// Open: a new session's welcome arrived (plain mode: the socket opened).
	Open EventKind = iota + 1
	// Resumed: a reconnect resumed the session; nothing was lost.
	Resumed
	// Reset: the gateway could not resume the session (Reason says why,
	// Err is a *ResetError with the sent messages dropped); a new session
	// is being started and its Open follows. What the old session had
	// kept for the client is not delivered (the gateway dead-letters it).
	Reset
	// Closed: the client is over (Close, a close from the gateway other
	// than 1001, 1006 and 4001, an upgrade refused for good, a protocol
	// error). Code and Reason are the close's when there was one; Err says
	// why when it was not Close.
	Closed
)

// String returns the kind's lower-case name.
func (k EventKind) String() string {
	switch k {
	case Open:
		return "open"
	case Resumed:
		return "resumed"
	case Reset:
		return "reset"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is what OnEvent gets.
type Event struct {
	Kind   EventKind
	Reason string
	Code   websocket.StatusCode
	Err    error
}

// String is for logs: "reset (unknown): …".
func (e Event) String() string {
	s := e.Kind.String()
	if e.Code != 0 {
		s += fmt.Sprintf(" %d", int(e.Code))
	}
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// dispatcher calls OnEvent from a goroutine of its own, so that the
// goroutine owning the socket never waits for the application, and the
// application may call any method (Close included) from OnEvent.
type dispatcher struct {
	fn   func(Event)
	mu   sync.Mutex
	q    []Event // guarded by mu
	wake chan struct{}
	done chan struct{} // closed once Closed was handed to fn
}

func newDispatcher(fn func(Event)) *dispatcher {
	d := &dispatcher{fn: fn, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go d.loop()
	return d
}

func (d *dispatcher) emit(ev Event) {
	d.mu.Lock()
	d.q = append(d.q, ev)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dispatcher) loop() {
	defer close(d.done)
	for {
		d.mu.Lock()
		if len(d.q) == 0 {
			d.mu.Unlock()
			<-d.wake
			continue
		}
		ev := d.q[0]
		d.q[0] = Event{}
		d.q = d.q[1:]
		d.mu.Unlock()
		if d.fn != nil {
			d.fn(ev)
		}
		if ev.Kind == Closed {
			return
		}
	}
}
