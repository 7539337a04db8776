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
	// Rewinds counts the times the bridge read the outbound log again from
	// an earlier position.
	Rewinds prometheus.Counter
	// Commits counts partition position writes by result.
	Commits *prometheus.CounterVec
	// Backlog is the number of outbound log entries each owned partition
	// has not read yet; the label is the partition number, bounded by the
	// partition count.
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
			Help: "Pushes of commands a previous owner of the partition may have pushed before it died (wsbridge gateway drops the repeats).",
		}),
		Rewinds: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "log_rewinds_total",
			Help: "Times this bridge read the outbound log again from an earlier position (a partition taken over, or resumed after holding its share of --max-held-bytes).",
		}),
		Commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "position_commits_total",
			Help: "Partition positions written to the positions bucket, by result (ok, conflict, error).",
		}, []string{"result"}),
		Backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "partition_backlog",
			Help: "Commands of the outbound log an owned partition has not read yet (every partition's, up to the log's end).",
		}, []string{"partition"}),
	}
	reg.MustRegister(m.Owned, m.Rebalances, m.Fenced, m.Duplicates, m.Rewinds, m.Commits, m.Backlog)
	for _, r := range []string{"ok", "conflict", "error"} {
		m.Commits.WithLabelValues(r)
	}
	return m
}
