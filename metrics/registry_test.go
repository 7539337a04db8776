package metrics

import (
	"runtime"
	"strings"
	"testing"
)

func TestNewProcessRegistry(t *testing.T) {
	mfs, err := NewProcessRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var goSeries, processSeries bool
	for _, mf := range mfs {
		goSeries = goSeries || strings.HasPrefix(mf.GetName(), "go_")
		processSeries = processSeries || strings.HasPrefix(mf.GetName(), "process_")
	}
	// The process collector reports nothing without /proc.
	if !goSeries || (!processSeries && runtime.GOOS == "linux") {
		t.Errorf("go_* %v, process_* %v; want both", goSeries, processSeries)
	}
}
