package gateway

import (
	"fmt"
	"time"

	"github.com/coder/websocket"
)

// Reasons of wsbridge_gateway_inbound_limited_total: which of a
// connection's inbound limits it went past.
const (
	limitedMessages = "messages" // InRate and InBurst
	limitedBytes    = "bytes"    // InBytesRate and InBytesBurst
)

// bucket is a token bucket of one connection, used by its reader goroutine
// alone, so it needs no lock: two numbers per limit, nothing while idle.
type bucket struct {
	tokens float64
	last   int64 // g.since() of the last take
}

// take removes n tokens after refilling rate per second since the last
// take, up to burst, and reports whether there were n. A bucket never used
// starts full.
func (b *bucket) take(now int64, n, rate, burst float64) bool {
	if b.last == 0 {
		b.tokens = burst
	} else if now > b.last {
		b.tokens = min(burst, b.tokens+rate*float64(now-b.last)/float64(time.Second))
	}
	b.last = now
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// inboundLimits are a connection's buckets: messages and bytes from the
// client.
type inboundLimits struct {
	msgs, bytes bucket
}

// admit charges one client message of n bytes to the connection's
// buckets and reports which limit it went past, "" when it is within both.
// Bursts up to InBurst messages and InBytesBurst bytes are absorbed; past
// them a client gets InRate messages and InBytesRate bytes a second.
func (c *conn) admit(n int) string {
	o := &c.g.opts
	now := c.g.since()
	if o.InRate > 0 && !c.in.msgs.take(now, 1, o.InRate, float64(o.InBurst)) {
		return limitedMessages
	}
	if o.InBytesRate > 0 && !c.in.bytes.take(now, float64(n), float64(o.InBytesRate), float64(o.InBytesBurst)) {
		return limitedBytes
	}
	return ""
}

// inLimitLogEvery spaces the log lines of clients closed for their
// inbound rate: a flood of them gets one line per interval.
const inLimitLogEvery = 10 * time.Second

// overLimit closes a client that went past an inbound limit with 1008
// (policy violation): the message is not forwarded, the disconnect is
// counted with reason rate, and the connection ends as any other (its
// cleanup and disconnect event follow). Closing rather than reading
// slower tells the client what happened; a reader that only paused would
// leave it writing into a socket that never drains, none the wiser.
func (c *conn) overLimit(which string, n int) {
	g := c.g
	g.m.inboundLimited.WithLabelValues(which).Inc()
	o := &g.opts
	g.inLimitLog.Do(func() {
		if which == limitedMessages {
			g.log.Warn("closing client: inbound message rate exceeded (one line per 10s)", "conn", c.id, "ip", c.ip,
				"in_rate", o.InRate, "in_burst", o.InBurst)
		} else {
			g.log.Warn("closing client: inbound byte rate exceeded (one line per 10s)", "conn", c.id, "ip", c.ip,
				"in_bytes_rate", o.InBytesRate, "in_bytes_burst", o.InBytesBurst, "message_bytes", n)
		}
	})
	reason := fmt.Sprintf("inbound rate exceeded: more than %g messages a second", o.InRate)
	if which == limitedBytes {
		reason = fmt.Sprintf("inbound rate exceeded: more than %d bytes a second", o.InBytesRate)
	}
	c.close(websocket.StatusPolicyViolation, reason, discRate)
}
