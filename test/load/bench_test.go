package load

import (
	"context"
	"os"
	"os/exec"
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
	rep, err = Load(context.Background(), LoadOptions{Conns: 20, Rate: 200, Duration: 300 * time.Millisecond, Dialers: 4, PushOnly: true})
	if err != nil {
		t.Fatalf("Load, pushes only: %v (%v)", err, rep)
	}
	if rep.Sent == 0 || rep.Received != rep.Sent {
		t.Errorf("report %v: want every push to arrive", rep)
	}
	t.Log(rep)
}

// BenchmarkConnections holds many connections and measures memory per
// connection and round-trip latency at a fixed message rate. It measures a
// fixed workload, not b.N operations: run it with -benchtime=1x.
// WSBRIDGE_BENCH_CONNS (default 1000), WSBRIDGE_BENCH_RATE (round trips per
// second, default 1000) and WSBRIDGE_BENCH_DURATION (default 3s) change it:
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
	var rep LoadReport
	for i := 0; i < b.N; i++ {
		var err error
		if rep, err = Load(context.Background(), opts); err != nil {
			b.Fatalf("Load: %v (%v)", err, rep)
		}
	}
	b.ReportMetric(0, "ns/op") // a fixed workload: time per op means nothing
	b.ReportMetric(float64(rep.Conns), "conns")
	b.ReportMetric(rep.HeapPerConn, "heap-B/conn")
	b.ReportMetric(rep.RSSPerConn, "rss-B/conn")
	b.ReportMetric(float64(rep.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(rep.P99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(rep.Conns)/rep.ConnectTime.Seconds(), "connects/s")
	b.ReportMetric(float64(rep.Received), "frames")
	b.Log(rep)
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
