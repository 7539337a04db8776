package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// stallMsg is a delivery that blocks in Metadata until released, to stop
// the bridge while a message is inside the consume callback.
type stallMsg struct {
	jetstream.Msg // nil: a method not below panics
	subject       string
	entered       chan struct{}
	release       chan struct{}
	once          sync.Once
	naks, acks    atomic.Int64
}

func (m *stallMsg) Metadata() (*jetstream.MsgMetadata, error) {
	m.once.Do(func() { close(m.entered) })
	<-m.release
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 1 << 40, Consumer: 1 << 40},
		NumDelivered: 1, Timestamp: time.Now()}, nil
}
func (m *stallMsg) Subject() string                  { return m.subject }
func (m *stallMsg) Reply() string                    { return "" }
func (m *stallMsg) Data() []byte                     { return []byte("late") }
func (m *stallMsg) Headers() nats.Header             { return nats.Header{} }
func (m *stallMsg) Ack() error                       { m.acks.Add(1); return nil }
func (m *stallMsg) DoubleAck(context.Context) error  { m.acks.Add(1); return nil }
func (m *stallMsg) Nak() error                       { m.naks.Add(1); return nil }
func (m *stallMsg) NakWithDelay(time.Duration) error { m.naks.Add(1); return nil }
func (m *stallMsg) InProgress() error                { return nil }
func (m *stallMsg) Term() error                      { return errors.New("unexpected term") }
func (m *stallMsg) TermWithReason(string) error      { return errors.New("unexpected term") }
func (m *stallMsg) String() string                   { return m.subject }

// A message that reaches the consume callback while the bridge
// begins to stop is either waited for or handed back, never left held.
func TestStopRaceWithHandle(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(nil)
	tok := subjects.Token("late")
	pn := subjects.Partition(tok, b.opts.Partitions)
	m := &stallMsg{subject: fmt.Sprintf("ws.out.send.%d.%s", pn, tok), entered: make(chan struct{}), release: make(chan struct{})}
	var pt *part
	for _, p := range b.ownedParts() {
		if p.n == pn {
			pt = p
		}
	}
	if pt == nil {
		t.Fatalf("partition %d of %q not owned (owned %v)", pn, tok, b.Owned())
	}
	go pt.handle(m)
	<-m.entered
	stopped := make(chan error, 1)
	go func() { stopped <- b.Stop(context.Background()) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("stop did not return")
	}
	close(m.release)
	waitFor(t, "the message handed back", 10*time.Second, func() bool { return m.naks.Load() == 1 })
	if b.heldCount() != 0 || m.acks.Load() != 0 {
		t.Errorf("held %d, acks %d after stop; want the message NAKed only", b.heldCount(), m.acks.Load())
	}
}
