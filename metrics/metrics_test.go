package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Pushes.WithLabelValues(ActionSend, ResultOK).Inc()
	m.PushDuration.Observe(0.01)
	m.DeliveryLag.Observe(0.02)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatalf("GatherAndLint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
	for _, c := range []prometheus.Collector{m.Pushes, m.PushDuration, m.DeliveryLag, m.Retries, m.DeadLetters,
		m.InFlight, m.ConsumerPending, m.AckPending, m.RegistryConnections, m.InboundEvents, m.NATSConnected, m.NATSReconnects} {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatalf("CollectAndLint: %v", err)
		}
		for _, p := range problems {
			t.Errorf("lint %s: %s", p.Metric, p.Text)
		}
	}
}

func TestNamesAndValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Pushes.WithLabelValues(ActionSend, ResultOK).Add(3)
	m.DeadLetters.WithLabelValues(ReasonGone).Inc()
	want := `
# HELP wsbridge_dead_letters_total Messages republished to the dead-letter stream by reason (permanent, gone, retries, invalid).
# TYPE wsbridge_dead_letters_total counter
wsbridge_dead_letters_total{reason="gone"} 1
wsbridge_dead_letters_total{reason="invalid"} 0
wsbridge_dead_letters_total{reason="permanent"} 0
wsbridge_dead_letters_total{reason="retries"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wsbridge_dead_letters_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.Pushes.WithLabelValues(ActionSend, ResultOK)); got != 3 {
		t.Errorf("pushes ok = %v, want 3", got)
	}
	// Only wsbridge's own instruments: the Go and process collectors are
	// the registry owner's to add.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
	}
	for _, name := range []string{"wsbridge_pushes_total", "wsbridge_nats_connected", "wsbridge_registry_connections"} {
		if !seen[name] {
			t.Errorf("metric %s not gathered", name)
		}
	}
	for name := range seen {
		if !strings.HasPrefix(name, Namespace+"_") {
			t.Errorf("New registered %s, want only %s_*", name, Namespace)
		}
	}
}
