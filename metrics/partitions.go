package metrics

import "github.com/prometheus/client_golang/prometheus"

// Partitions are the instruments of partitioned outbound work: which
// partitions this bridge works, how often they moved, pushes withheld by
// fencing, possible duplicates and each partition's backlog.
type Partitions struct {
	// Owned is the number of partitions this bridge holds the lease of.
	Owned prometheus.Gauge
	// Rebalances counts partitions this bridge took or gave up.
	Rebalances prometheus.Counter
	// Fenced counts pushes not made because the partition's lease could
	// not be confirmed in time (the bridge may have lost it).
	Fenced prometheus.Counter
	// Duplicates counts pushes of redelivered messages: a bridge may have
	// pushed them before it died or lost the partition.
	Duplicates prometheus.Counter
	// Backlog is the number of messages of each owned partition not yet
	// delivered to a bridge; the label is the partition number, bounded by
	// the partition count.
	Backlog *prometheus.GaugeVec
}

// NewPartitions builds the partition instruments and registers them on reg.
func NewPartitions(reg prometheus.Registerer) *Partitions {
	m := &Partitions{
		Owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "partitions_owned",
			Help: "Outbound partitions this bridge holds the lease of.",
		}),
		Rebalances: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "partition_rebalances_total",
			Help: "Outbound partitions this bridge took over or gave up.",
		}),
		Fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "fenced_pushes_total",
			Help: "Pushes withheld because the partition's lease was not confirmed in time.",
		}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "duplicate_pushes_total",
			Help: "Pushes of redelivered messages, which may repeat the connection's latest push.",
		}),
		Backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "partition_backlog",
			Help: "Messages of an owned outbound partition not yet delivered to a bridge.",
		}, []string{"partition"}),
	}
	reg.MustRegister(m.Owned, m.Rebalances, m.Fenced, m.Duplicates, m.Backlog)
	return m
}
