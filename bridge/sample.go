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
			// The owned partitions' consumers: the backlog and what is
			// held is this bridge's share.
			var pending, ackPending uint64
			for _, p := range b.ownedParts() {
				cons := p.consumers()
				if cons == nil {
					continue
				}
				ctx, cancel := context.WithTimeout(b.bgCtx, 2*time.Second)
				var backlog uint64
				ok := true
				for _, c := range cons {
					info, err := c.Info(ctx)
					if err != nil {
						ok = false
						break
					}
					backlog += info.NumPending
					ackPending += uint64(info.NumAckPending)
				}
				if ok {
					pending += backlog
					b.pm.Backlog.WithLabelValues(strconv.Itoa(p.n)).Set(float64(backlog))
				}
				cancel()
			}
			b.m.ConsumerPending.Set(float64(pending))
			b.m.AckPending.Set(float64(ackPending))
		}
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
	}
}
