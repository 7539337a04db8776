package gateway

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// names gathers the metric family names g serves.
func names(t *testing.T, gatherer prometheus.Gatherer) []string {
	t.Helper()
	mfs, err := gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		out = append(out, mf.GetName())
	}
	return out
}

// TestMetricsRegistersOnlyItsOwn: the gateway registers its instruments
// and nothing else; the registry's owner adds the Go and process collectors.
func TestMetricsRegistersOnlyItsOwn(t *testing.T) {
	e := newEnv(t, nil, nil)
	for _, n := range names(t, e.g.Gatherer()) {
		if !strings.HasPrefix(n, "wsbridge_gateway_") {
			t.Errorf("the gateway's own registry serves %s, want only wsbridge_gateway_*", n)
		}
	}
	problems, err := testutil.GatherAndLint(e.g.Gatherer())
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	// The owner's registry: the gateway's series beside the owner's.
	reg := prometheus.NewRegistry()
	owner := prometheus.NewCounter(prometheus.CounterOpts{Name: "owner_total", Help: "The owner's."})
	reg.MustRegister(owner)
	e2 := newEnv(t, nil, func(o *Options) { o.Registerer, o.Gatherer = reg, reg })
	got := strings.Join(names(t, e2.g.Gatherer()), " ")
	if !strings.Contains(got, "owner_total") || !strings.Contains(got, "wsbridge_gateway_connects_total") {
		t.Errorf("the owner's registry serves %s, want owner_total and the gateway's series", got)
	}
}

func TestMetricsRegistererNeedsGatherer(t *testing.T) {
	reg := prometheus.NewRegistry()
	for _, o := range []Options{{Registerer: reg}, {Gatherer: reg}} {
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "Registerer and Gatherer go together") {
			t.Errorf("Validate with only one of Registerer, Gatherer: %v", err)
		}
	}
}
