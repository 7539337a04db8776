package gateway

import (
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Results of wsbridge_gateway_connects_total.
const (
	connectAccepted = "accepted" // upgraded
	connectRejected = "rejected" // the register function said no
	connectRefused  = "refused"  // a limit, the Origin list, shutting down
	connectError    = "error"    // the register invocation failed, or answered errNo 500-599
)

// Results of wsbridge_gateway_pushes_total.
const (
	pushOK           = "ok"
	pushGone         = "gone"
	pushUnauthorized = "unauthorized"
	pushInvalid      = "invalid"
	pushError        = "error"
)

// Reasons of wsbridge_gateway_disconnects_total: a bounded set.
const (
	discClient   = "client"   // the client closed or its connection broke
	discClosed   = "closed"   // a push asked to close it
	discIdle     = "idle"     // no frame for IdleTimeout
	discPing     = "ping"     // no pong in time
	discError    = "error"    // the transfer function failed, or a write
	discShutdown = "shutdown" // this instance stopped
	discLost     = "lost"     // announced for a vanished instance
	discInvalid  = "invalid"  // the client broke the protocol: a message cut off, past the size limit, or text not UTF-8
	discSlow     = "slow"     // its send queue overflowed or a frame to it stalled
	discRate     = "rate"     // it sent past its inbound message or byte rate
)

type gwMetrics struct {
	gatherer        prometheus.Gatherer
	connections     prometheus.GaugeFunc
	connects        *prometheus.CounterVec
	frames          *prometheus.CounterVec
	pushes          *prometheus.CounterVec
	pushesRepeated  prometheus.Counter
	sendQueueBytes  prometheus.GaugeFunc
	invocations     *prometheus.HistogramVec
	disconnects     *prometheus.CounterVec
	listenerRefused prometheus.Counter
	listenerEvicted prometheus.Counter
	acceptErrors    *prometheus.CounterVec
	framesIn        prometheus.Counter
	framesOut       prometheus.Counter
	retries         *prometheus.CounterVec
	retryDropped    *prometheus.CounterVec
	retryPending    *prometheus.GaugeVec
	framesDropped   *prometheus.CounterVec
	deadLetters     prometheus.Counter
	inboundLimited  *prometheus.CounterVec
	sessionSuspends prometheus.Counter
	sessionResumes  *prometheus.CounterVec
	sessionEnds     *prometheus.CounterVec
	sessionRefusals *prometheus.CounterVec
	pingLate        prometheus.Histogram
	lockHold        prometheus.Histogram
}

func newMetrics(g *Gateway) *gwMetrics {
	const ns, sub = "wsbridge", "gateway"
	reg, gatherer := g.opts.Registerer, g.opts.Gatherer
	if reg == nil {
		own := prometheus.NewRegistry()
		reg, gatherer = own, own
	}
	m := &gwMetrics{gatherer: gatherer}
	m.connections = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connections",
		Help: "Open WebSocket connections."}, func() float64 { return float64(g.stats.open.Load()) })
	m.connects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "connects_total",
		Help: "Upgrade requests by result: accepted, rejected (register said no), refused (limit, Origin, shutdown), error (register failed, or answered errNo 500-599)."},
		[]string{"result"})
	m.frames = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "frames_total",
		Help: "WebSocket data frames, in from clients and out to them."}, []string{"direction"})
	m.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "pushes_total",
		Help: "Reverse-push requests by result."}, []string{"result"})
	m.pushesRepeated = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "pushes_repeated_total",
		Help: "Pushes answered as delivered but not written, their Ws-Seq at or below the last one the connection took (also in pushes_total as ok)."})
	m.sendQueueBytes = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "send_queue_bytes",
		Help: "Bytes of pushed frames queued for clients and not yet written, every connection together."},
		func() float64 { return float64(g.queuedBytes.Load()) })
	m.invocations = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "invocation_duration_seconds",
		Help: "Function invocation latency.", Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12)}, []string{"function"})
	m.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "disconnects_total",
		Help: "Ended connections by reason."}, []string{"reason"})
	m.listenerRefused = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "listener_refused_total",
		Help: "TCP connections closed at once because a listener was at a connection cap with none waiting for a request to close instead."})
	m.listenerEvicted = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "listener_evicted_total",
		Help: "TCP connections waiting for a request (silent since accepted, or idle between keep-alive requests) closed to make room for a new one at a listener's cap."})
	m.acceptErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "accept_errors_total",
		Help: "Accepts that failed for want of a file descriptor (EMFILE, ENFILE), by listener: the connection is then taken on a descriptor held in reserve (client and push answered 503, ops served) or waits for one."},
		[]string{"listener"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "retries_total",
		Help: "Attempts to hand NATS what an earlier attempt failed to: a connection's end (registry delete and disconnect event), a dead letter."},
		[]string{"what"})
	m.retryDropped = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "retries_dropped_total",
		Help: "Work for NATS given up without being taken: the retry queue was full, the gateway stopped with it waiting, or NATS refuses it for good."},
		[]string{"what", "why"})
	m.retryPending = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "retries_pending",
		Help: "Work waiting in the retry queue for NATS to take it."}, []string{"what"})
	m.framesDropped = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "frames_dropped_total",
		Help: "Frames taken for clients (their pushes answered 200) and never written, by why: slow (the client did not read), ended (it left, a write failed, shutdown). An edge instance dead-letters each."},
		[]string{"reason"})
	m.deadLetters = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dead_letters_total",
		Help: "Dead letters published for frames taken and never written."})
	m.inboundLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "inbound_limited_total",
		Help: "Clients closed with 1008 for sending past a per-connection inbound limit, by which: messages (--in-rate, --in-burst) or bytes (--in-bytes-rate, --in-bytes-burst)."},
		[]string{"reason"})
	refusing := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "jetstream_refusing",
		Help: "1 while this instance's recent writes (events, registry records, its instance record) were refused by JetStream for want of room; /readyz answers 503 meanwhile."}, func() float64 {
		if g.writes.check(g.since()) != nil {
			return 1
		}
		return 0
	})
	sessionsLive := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions_live",
		Help: "Resumable sessions a socket of this instance serves."}, func() float64 { return float64(g.sessLive.Load()) })
	sessionsSuspended := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions_suspended",
		Help: "Resumable sessions this instance holds whose socket is gone: waiting for their client to resume, here or at another instance."},
		func() float64 { return float64(g.sessSuspended.Load()) })
	sessionBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "session_buffer_bytes",
		Help: "Bytes every session keeps for its client (sent or to send, not yet acknowledged); bounded by --resume-buffer-total."},
		func() float64 { return float64(g.sessBytes.Load()) })
	m.sessionSuspends = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "session_suspends_total",
		Help: "Sessions suspended: their socket broke, went quiet or was closed by a shutdown, and they wait for the client."})
	m.sessionResumes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "session_resumes_total",
		Help: "Sessions resumed by their client, by where the session was: local (this instance) or remote (taken from another)."}, []string{"from"})
	m.sessionEnds = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "session_ends_total",
		Help: "Suspended sessions ended without their client, by reason: expired (not resumed within --resume-window), slow (their buffer overflowed), lost (announced lost by another instance while this one was cut off from NATS); and sessions handed to another instance (moved)."},
		[]string{"reason"})
	m.sessionRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "session_refusals_total",
		Help: "Resumes refused, by the reason the client is told: expired, unknown, slow, lost, off, closed; later (the holder did not answer: the client tries again)."},
		[]string{"reason"})
	m.pingLate = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "ping_late_seconds",
		Help:    "How long after a quiet connection's ping interval ran out its ping was written (one tick of the janitor at most when on time; the count is the pings written).",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300}})
	m.lockHold = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "janitor_lock_hold_seconds",
		Help:    "How long the janitor held one of its locks: one deadline bucket of one shard, each tick.",
		Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10)})
	lockHoldMax := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "janitor_lock_hold_max_seconds",
		Help: "Longest the janitor held one of its locks since start."},
		func() float64 { return float64(g.wheel.lockHold.Load()) / 1e9 })
	natsUp := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "nats_connected",
		Help: "1 while the NATS connection is up (0 without NATS)."}, func() float64 {
		if g.opts.NATS != nil && g.opts.NATS.Status() == nats.CONNECTED {
			return 1
		}
		return 0
	})
	reg.MustRegister(m.connections, m.connects, m.frames, m.pushes, m.pushesRepeated, m.sendQueueBytes, m.invocations, m.disconnects, m.listenerRefused, m.listenerEvicted, m.acceptErrors, natsUp,
		m.retries, m.retryDropped, m.retryPending, m.framesDropped, m.deadLetters, m.inboundLimited, refusing, m.pingLate, m.lockHold, lockHoldMax,
		sessionsLive, sessionsSuspended, sessionBytes, m.sessionSuspends, m.sessionResumes, m.sessionEnds, m.sessionRefusals)
	for _, r := range []string{"local", "remote"} {
		m.sessionResumes.WithLabelValues(r)
	}
	for _, r := range []string{resetExpired, resetSlow, resetLost, "moved"} {
		m.sessionEnds.WithLabelValues(r)
	}
	for _, r := range []string{resetExpired, resetUnknown, resetSlow, resetLost, resetOff, resetClosed, takeLater} {
		m.sessionRefusals.WithLabelValues(r)
	}
	// Every label value exists from the start, so rates work from zero.
	for _, r := range []string{connectAccepted, connectRejected, connectRefused, connectError} {
		m.connects.WithLabelValues(r)
	}
	for _, r := range []string{pushOK, pushGone, pushUnauthorized, pushInvalid, pushError} {
		m.pushes.WithLabelValues(r)
	}
	for _, r := range []string{discClient, discClosed, discIdle, discPing, discError, discShutdown, discLost, discInvalid, discSlow, discRate} {
		m.disconnects.WithLabelValues(r)
	}
	for _, r := range []string{limitedMessages, limitedBytes} {
		m.inboundLimited.WithLabelValues(r)
	}
	for _, r := range []string{dropSlow, dropEnded} {
		m.framesDropped.WithLabelValues(r)
	}
	for _, l := range []string{"client", "push", "ops"} {
		m.acceptErrors.WithLabelValues(l)
	}
	for _, w := range []string{retryDisconnect, retryDeadLetter} {
		m.retries.WithLabelValues(w)
		m.retryPending.WithLabelValues(w)
		for _, why := range []string{dropFull, dropStopped, dropRefused} {
			m.retryDropped.WithLabelValues(w, why)
		}
	}
	for _, f := range []string{"register", "transfer", "cleanup"} {
		m.invocations.WithLabelValues(f)
	}
	m.framesIn, m.framesOut = m.frames.WithLabelValues("in"), m.frames.WithLabelValues("out")
	return m
}

func (m *gwMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.gatherer, promhttp.HandlerOpts{})
}

// Gatherer returns what the gateway's /metrics serves.
func (g *Gateway) Gatherer() prometheus.Gatherer { return g.m.gatherer }
