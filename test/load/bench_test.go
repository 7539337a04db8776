package load

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestLoadSmall keeps Load working under -race with a handful of
// connections; the figures come from BenchmarkConnections.
func TestLoadSmall(t *testing.T) {
	rep, err := Load(context.Background(), LoadOptions{Conns: 20, Rate: 200, Duration: 300 * time.Millisecond, Dialers: 4})
	if err != nil {
		t.Fatalf("Load: %v (%v)", err, rep)
	}
	if rep.Conns != 20 || rep.Sent == 0 || rep.Received != rep.Sent {
		t.Errorf("report %v: want 20 connections and every round trip back", rep)
	}
	t.Log(rep)
	for _, baseline := range []bool{false, true} {
		rep, err = Load(context.Background(), LoadOptions{Conns: 20, Rate: 200, Duration: 300 * time.Millisecond, Dialers: 4, PushOnly: true, Baseline: baseline})
		if err != nil {
			t.Fatalf("Load, pushes only, baseline %v: %v (%v)", baseline, err, rep)
		}
		if rep.Sent == 0 || rep.Received != rep.Sent {
			t.Errorf("report %v: want every push to arrive", rep)
		}
		t.Log(rep)
	}
}

// BenchmarkConnections holds many connections and measures memory per
// connection and round-trip latency at a fixed message rate. It measures a
// fixed workload, not b.N operations: run it with -benchtime=1x.
// WSBRIDGE_BENCH_CONNS (default 1000), WSBRIDGE_BENCH_RATE (round trips per
// second, default 1000), WSBRIDGE_BENCH_DURATION (default 3s) and
// WSBRIDGE_BENCH_RUNS (default 3) change it. Each run measures the gateway
// and the baseline server (baseline.go); it reports medians and ratios:
//
//	WSBRIDGE_BENCH_CONNS=10000 go test -run '^$' -bench Connections -benchtime=1x ./test/load/
func BenchmarkConnections(b *testing.B) {
	runBench(b, benchOptions(b))
}

// BenchmarkPushLatency is BenchmarkConnections measuring push-to-client
// latency: WSBRIDGE_BENCH_RATE pushes a second POSTed to the reverse-push
// address, round robin over the connections:
//
//	WSBRIDGE_BENCH_CONNS=10000 go test -run '^$' -bench PushLatency -benchtime=1x ./test/load/
func BenchmarkPushLatency(b *testing.B) {
	opts := benchOptions(b)
	opts.PushOnly = true
	runBench(b, opts)
}

func runBench(b *testing.B, opts LoadOptions) {
	// The clients run in a child process (this test binary, see
	// TestLoadClientProcess) so the memory figures are the emulator's own
	// and each process needs one descriptor per connection.
	opts.ClientCmd = func(wsURL string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLoadClientProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			"WSBRIDGE_LOAD_CLIENT_URL="+wsURL,
			"WSBRIDGE_BENCH_CONNS="+strconv.Itoa(opts.Conns),
			"WSBRIDGE_BENCH_RATE="+strconv.Itoa(opts.Rate),
			"WSBRIDGE_BENCH_DURATION="+opts.Duration.String(),
			"WSBRIDGE_BENCH_PUSH_ONLY="+strconv.FormatBool(opts.PushOnly))
		return cmd
	}
	// WSBRIDGE_BENCH_RUNS runs (3) of the gateway and of the baseline
	// server, alternating, so both see the same machine; medians and the
	// gateway/baseline ratios are reported.
	runs := 3
	if v := os.Getenv("WSBRIDGE_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("WSBRIDGE_BENCH_RUNS=%q: want a positive integer", v)
		}
		runs = n
	}
	var gw, bl []LoadReport
	for range runs {
		for _, baseline := range []bool{true, false} {
			o := opts
			o.Baseline = baseline
			rep, err := Load(context.Background(), o)
			if err != nil {
				b.Fatalf("Load (baseline %v): %v (%v)", baseline, err, rep)
			}
			b.Logf("baseline=%v %v", baseline, rep)
			if baseline {
				bl = append(bl, rep)
			} else {
				gw = append(gw, rep)
			}
		}
	}
	b.ReportMetric(0, "ns/op") // a fixed workload: time per op means nothing
	b.ReportMetric(float64(opts.Conns), "conns")
	for _, m := range []struct {
		unit string
		f    func(LoadReport) float64
	}{
		{"heap-B/conn", func(r LoadReport) float64 { return r.HeapPerConn }},
		{"rss-B/conn", func(r LoadReport) float64 { return r.RSSPerConn }},
		{"connects/s", func(r LoadReport) float64 { return float64(r.Conns) / r.ConnectTime.Seconds() }},
		{"p50-µs", func(r LoadReport) float64 { return float64(r.P50.Microseconds()) }},
		{"p99-µs", func(r LoadReport) float64 { return float64(r.P99.Microseconds()) }},
	} {
		g, base := median(gw, m.f), median(bl, m.f)
		b.ReportMetric(g, m.unit)
		b.ReportMetric(g/base, "ratio-"+m.unit)
		b.Logf("%-12s gateway %10.0f  baseline %10.0f  ratio %.2f  (medians of %d)", m.unit, g, base, g/base, runs)
	}
}

func median(reps []LoadReport, f func(LoadReport) float64) float64 {
	v := make([]float64, len(reps))
	for i, r := range reps {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// benchOptions reads the WSBRIDGE_BENCH_* variables.
func benchOptions(tb testing.TB) LoadOptions {
	opts, err := LoadOptionsFromEnv(LoadOptions{Conns: 1000, Rate: 1000}, os.Getenv)
	if err != nil {
		tb.Fatal(err)
	}
	return opts.withDefaults()
}

// TestLoadClientProcess is the client half of BenchmarkConnections when the
// benchmark re-executes this test binary; otherwise it is skipped.
func TestLoadClientProcess(t *testing.T) {
	url := os.Getenv("WSBRIDGE_LOAD_CLIENT_URL")
	if url == "" {
		t.Skip("only runs as BenchmarkConnections' client process")
	}
	opts := benchOptions(t)
	opts.PushOnly = os.Getenv("WSBRIDGE_BENCH_PUSH_ONLY") == "true"
	if err := RunLoadClients(context.Background(), url, opts, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}
