package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewProcessRegistry returns a registry with the Go runtime and process
// collectors, for the owner of a process's registry (main, the dev stack),
// which then hands it to the components as their Registerer and Gatherer.
// Components register only their own instruments, so a process has one set
// of go_* and process_* series however many components it runs.
func NewProcessRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
