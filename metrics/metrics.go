// Package metrics holds the bridge's Prometheus instruments (SPEC §5).
//
// The instruments are a struct built by New against a caller-owned
// Registerer, never global promauto state, so tests and the dev command can
// run several bridges in one process. Every label is a small, fixed enum:
// connection, user and group ids never become label values.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every metric name.
const Namespace = "wsbridge"

// Label values of pushes_total{action}.
const (
	ActionSend  = "send"
	ActionClose = "close"
)

// Label values of pushes_total{result}.
const (
	ResultOK        = "ok"
	ResultTransient = "transient"
	ResultPermanent = "permanent"
	ResultGone      = "gone"
)

// Label values of dead_letters_total{reason}; the same strings go into the
// Ws-Reason header of the dead letter.
const (
	ReasonPermanent = "permanent"
	ReasonGone      = "gone"
	ReasonRetries   = "retries"
	ReasonInvalid   = "invalid"
)

// Label values of inbound_events_total{type}.
const (
	EventConnect    = "connect"
	EventMessage    = "message"
	EventDisconnect = "disconnect"
	EventInvalid    = "invalid"
)

// Label values of api_requests_total{result}.
const (
	APIOK       = "ok"        // answered
	APIError    = "error"     // answered {"error"}: a bad request, a registry failure
	APITooLarge = "too_large" // larger than --api-max-request-bytes: refused unread
	APIBusy     = "busy"      // the queue was full: refused at once
	APIDropped  = "dropped"   // came faster than the bridge took them in: dropped by its NATS connection, unanswered
)

// Metrics are the bridge's instruments.
type Metrics struct {
	// Pushes counts reverse-push attempts by action and result.
	Pushes *prometheus.CounterVec
	// PushDuration observes each push's HTTP round trip.
	PushDuration prometheus.Histogram
	// DeliveryLag observes the time from the stream timestamp of an outbound
	// message to the end of its successful push.
	DeliveryLag prometheus.Histogram
	// Retries counts pushes scheduled again after a transient failure.
	Retries prometheus.Counter
	// DeadLetters counts messages republished to the dead-letter stream.
	DeadLetters *prometheus.CounterVec
	// InFlight is the number of pushes currently waiting for the gateway.
	InFlight prometheus.Gauge
	// ConsumerPending is the number of outbound log entries the owned
	// partition furthest behind has not read yet (the backlog).
	ConsumerPending prometheus.Gauge
	// AckPending is the number of outbound commands the owned partitions
	// took and have not resolved yet.
	AckPending prometheus.Gauge
	// HeldBytes is what the messages this bridge holds count against its
	// --max-held-bytes budget.
	HeldBytes prometheus.Gauge
	// DeadLetterFailures counts dead-letter publishes that failed (each
	// is retried, then the message goes back to the stream).
	DeadLetterFailures prometheus.Counter
	// RegistryConnections is the size of the in-memory registry index.
	RegistryConnections prometheus.Gauge
	// InboundEvents counts inbound events seen on P.in.> by type.
	InboundEvents *prometheus.CounterVec
	// NATSConnected is 1 while the NATS connection is up.
	NATSConnected prometheus.Gauge
	// NATSReconnects counts NATS reconnections.
	NATSReconnects prometheus.Counter
	// APIRequests counts request-reply API requests by result.
	APIRequests *prometheus.CounterVec
}

// New builds the instruments and registers them, and nothing else, on reg:
// the Go and process collectors are added by whoever owns the registry
// (NewProcessRegistry). It panics if reg already holds any of them, like
// prometheus.MustRegister: that is a programming error.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "pushes_total",
			Help: "Reverse-push attempts by action (send, close) and result (ok, transient, permanent, gone).",
		}, []string{"action", "result"}),
		PushDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "push_duration_seconds",
			Help:    "Duration of one reverse-push HTTP round trip.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		DeliveryLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "delivery_lag_seconds",
			Help:    "Time from an outbound message's stream timestamp to the end of its successful push.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		Retries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "retries_total",
			Help: "Pushes scheduled again after a transient failure.",
		}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "dead_letters_total",
			Help: "Messages republished to the dead-letter stream by reason (permanent, gone, retries, invalid).",
		}, []string{"reason"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "pushes_in_flight",
			Help: "Reverse pushes waiting for the gateway's answer.",
		}),
		ConsumerPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "consumer_pending",
			Help: "Outbound log entries the owned partition furthest behind has not read yet.",
		}),
		AckPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "consumer_ack_pending",
			Help: "Outbound commands the owned partitions took and have not resolved (pushed or dead-lettered) yet.",
		}),
		HeldBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "held_bytes",
			Help: "Bytes of the outbound messages this bridge holds (bodies and push bodies), bounded by --max-held-bytes.",
		}),
		DeadLetterFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "dead_letter_failures_total",
			Help: "Dead-letter publishes that failed.",
		}),
		RegistryConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "registry_connections",
			Help: "Connections in the bridge's index of the registry bucket.",
		}),
		InboundEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "inbound_events_total",
			Help: "Inbound events seen by type (connect, message, disconnect, invalid).",
		}, []string{"type"}),
		NATSConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "nats_connected",
			Help: "1 while the bridge's NATS connection is up, else 0.",
		}),
		NATSReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "nats_reconnects_total",
			Help: "NATS reconnections of the bridge's connection.",
		}),
		APIRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "api_requests_total",
			Help: "Request-reply API requests by result (ok, error, too_large, busy, dropped).",
		}, []string{"result"}),
	}
	// Pre-create the enum label values so dashboards see zeros, not gaps.
	for _, a := range []string{ActionSend, ActionClose} {
		for _, r := range []string{ResultOK, ResultTransient, ResultPermanent, ResultGone} {
			m.Pushes.WithLabelValues(a, r)
		}
	}
	for _, r := range []string{ReasonPermanent, ReasonGone, ReasonRetries, ReasonInvalid} {
		m.DeadLetters.WithLabelValues(r)
	}
	for _, e := range []string{EventConnect, EventMessage, EventDisconnect, EventInvalid} {
		m.InboundEvents.WithLabelValues(e)
	}
	for _, r := range []string{APIOK, APIError, APITooLarge, APIBusy, APIDropped} {
		m.APIRequests.WithLabelValues(r)
	}
	reg.MustRegister(
		m.Pushes, m.PushDuration, m.DeliveryLag, m.Retries, m.DeadLetters,
		m.InFlight, m.ConsumerPending, m.AckPending, m.HeldBytes, m.DeadLetterFailures, m.RegistryConnections,
		m.InboundEvents, m.NATSConnected, m.NATSReconnects, m.APIRequests,
	)
	return m
}
