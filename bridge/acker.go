package bridge

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// acker sends acknowledgements that ask the server to confirm them and
// calls back when it did, without a goroutine waiting per ack: a worker
// moves on to other connections while a connection's lane waits for its
// confirmation (a blocking DoubleAck per push held workers for a round trip
// each and cut the drain rate by two thirds).
type acker struct {
	nc     *nats.Conn
	prefix string
	sub    *nats.Subscription
	next   atomic.Uint64
	mu     sync.Mutex
	wait   map[string]pendingAck
	quit   chan struct{}
	done   chan struct{}
}

type pendingAck struct {
	deadline time.Time
	cb       func(error)
}

func newAcker(nc *nats.Conn) (*acker, error) {
	a := &acker{nc: nc, prefix: nc.NewInbox() + ".", wait: map[string]pendingAck{}, quit: make(chan struct{}), done: make(chan struct{})}
	sub, err := nc.Subscribe(a.prefix+"*", a.reply)
	if err != nil {
		return nil, err
	}
	sub.SetPendingLimits(-1, -1)
	a.sub = sub
	go a.sweep()
	return a, nil
}

// ack acknowledges the message whose ack subject is reply; cb gets nil once
// the server confirmed it, or why not.
func (a *acker) ack(reply string, cb func(error)) {
	id := strconv.FormatUint(a.next.Add(1), 36)
	a.mu.Lock()
	a.wait[id] = pendingAck{deadline: time.Now().Add(ackTimeout), cb: cb}
	a.mu.Unlock()
	if err := a.nc.PublishRequest(reply, a.prefix+id, []byte("+ACK")); err != nil {
		if a.take(id) != nil {
			cb(err)
		}
	}
}

func (a *acker) take(id string) func(error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.wait[id]
	if !ok {
		return nil
	}
	delete(a.wait, id)
	return p.cb
}

func (a *acker) reply(m *nats.Msg) {
	cb := a.take(m.Subject[len(a.prefix):])
	if cb == nil {
		return // timed out already
	}
	var err error
	if len(m.Data) > 0 && m.Data[0] == '-' {
		err = errors.New("ack refused: " + string(m.Data))
	}
	cb(err)
}

// sweep fails the acknowledgements not confirmed within ackTimeout.
func (a *acker) sweep() {
	defer close(a.done)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-a.quit:
			a.failAll(errors.New("bridge stopped"))
			return
		case now := <-t.C:
			var late []func(error)
			a.mu.Lock()
			for id, p := range a.wait {
				if now.After(p.deadline) {
					late = append(late, p.cb)
					delete(a.wait, id)
				}
			}
			a.mu.Unlock()
			for _, cb := range late {
				cb(errAckTimeout)
			}
		}
	}
}

func (a *acker) failAll(err error) {
	a.mu.Lock()
	all := a.wait
	a.wait = map[string]pendingAck{}
	a.mu.Unlock()
	for _, p := range all {
		p.cb(err)
	}
}

func (a *acker) stop() {
	close(a.quit)
	<-a.done
	_ = a.sub.Unsubscribe()
}
