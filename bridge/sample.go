package bridge

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// countInbound counts inbound events by type; bounded label values only.
func (b *Bridge) countInbound(m *nats.Msg) {
	s, err := b.names.Parse(m.Subject)
	if err != nil || s.Dir != subjects.In {
		b.m.InboundEvents.WithLabelValues(metrics.EventInvalid).Inc()
		return
	}
	b.m.InboundEvents.WithLabelValues(string(s.Kind)).Inc()
}

// sample refreshes the gauges that come from elsewhere: NATS state,
// reconnects and the owned partitions' backlog.
func (b *Bridge) sample() {
	defer b.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		connected := 0.0
		if b.nc.IsConnected() {
			connected = 1
		}
		b.m.NATSConnected.Set(connected)
		if r := b.nc.Stats().Reconnects; r > b.lastRecon {
			b.m.NATSReconnects.Add(float64(r - b.lastRecon))
			b.lastRecon = r
		}
		if connected == 1 {
			b.sampleBacklog()
		}
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
	}
}

// sampleBacklog sets the backlog gauges of the owned partitions: what each
// has not read of the log yet (the bridge's backlog is the largest), and
// what they hold unresolved.
func (b *Bridge) sampleBacklog() {
	ctx, cancel := context.WithTimeout(b.bgCtx, 2*time.Second)
	defer cancel()
	st, err := b.js.Stream(ctx, b.names.StreamOut())
	if err != nil {
		return
	}
	last := st.CachedInfo().State.LastSeq
	var pending, held uint64
	for _, p := range b.ownedParts() {
		from, ok := p.from()
		if !ok {
			p.mu.Lock()
			from = p.next
			p.mu.Unlock()
		}
		backlog := uint64(0)
		if last+1 > from {
			backlog = last + 1 - from
		}
		pending = max(pending, backlog)
		held += uint64(p.heldCount())
		b.pm.Backlog.WithLabelValues(strconv.Itoa(p.n)).Set(float64(backlog))
	}
	b.m.ConsumerPending.Set(float64(pending))
	b.m.AckPending.Set(float64(held))
}
