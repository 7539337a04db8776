//go:build unix

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/load"
	"github.com/wsbridge/wsbridge/test/stack"
)

// BenchmarkDevLoad holds many WebSocket connections on the full dev stack
// (in-process functions, embedded NATS, the bridge, a Go echo backend on
// P.in.message.* answering with SendText) and measures the round trip
// client → transfer → NATS → backend → WS_OUT → bridge → /push → client at
// a fixed message rate. It measures a fixed workload, not b.N operations:
//
//	WSBRIDGE_BENCH_CONNS=10000 go test -run '^$' -bench DevLoad -benchtime=1x ./test/e2e/
//
// WSBRIDGE_BENCH_CONNS (default 1000), WSBRIDGE_BENCH_RATE (round trips per
// second over all connections, default 1000) and WSBRIDGE_BENCH_DURATION
// (default 5s) change it. The clients run in a child process (this test
// binary, see TestDevLoadClientProcess), so the memory figure is the
// stack's own and each process needs one descriptor per connection.
func BenchmarkDevLoad(b *testing.B) {
	opts := devLoadOptions(b)
	if err := load.RaiseFileLimit(uint64(opts.Conns + 4096)); err != nil {
		b.Fatalf("%d connections: %v", opts.Conns, err)
	}
	st := startStack(b, func(o *stack.Options) {
		o.Functions = "" // in process, as `wsbridge dev` runs them
		o.Gateway.MaxConnections = opts.Conns + 64
		o.Gateway.IdleTimeout = time.Hour
		o.Gateway.ShutdownTimeout = time.Minute
	})
	svc := newService(b, st)
	var echoFailures atomic.Int64
	sub, err := svc.nc.Subscribe(svc.names.InboundKind(subjects.KindMessage), func(m *nats.Msg) {
		ev, err := svc.names.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			echoFailures.Add(1)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := svc.c.SendText(ctx, ev.Token, string(ev.Data)); err != nil {
			echoFailures.Add(1)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	if err := svc.nc.Flush(); err != nil {
		b.Fatal(err)
	}

	var r devLoadResult
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r = runDevLoad(b, st, svc, opts)
	}
	b.StopTimer()
	if n := echoFailures.Load(); n > 0 {
		b.Errorf("echo backend: %d messages not answered", n)
	}
	b.ReportMetric(0, "ns/op") // a fixed workload: time per op means nothing
	b.ReportMetric(float64(r.held), "conns")
	b.ReportMetric(float64(r.res.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(r.res.P99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(r.rss)/(1<<20), "rss-MB")
	line := fmt.Sprintf("dev stack: conns=%d held=%d connect=%v rate=%d/s for %v round-trips=%d/%d p50=%v p99=%v max=%v rss=%.0fMB heap=%.0fMB goroutines=%d",
		opts.Conns, r.held, r.res.ConnectTime.Round(time.Millisecond), opts.Rate, opts.Duration, r.res.Received, r.res.Sent,
		r.res.P50, r.res.P99, r.res.Max, float64(r.rss)/(1<<20), float64(r.heap)/(1<<20), r.goroutines)
	fmt.Println(line)
	b.Log(line)
}

type devLoadResult struct {
	held       int   // connections open on the gateway and in the bridge's index
	rss, heap  int64 // of this process (the whole stack), all connections open
	goroutines int
	res        load.ClientResult
}

// runDevLoad runs the client process once: it connects every client, the
// stack is checked to hold them all, then the round trips run.
func runDevLoad(b *testing.B, st *stack.Stack, svc *service, opts load.LoadOptions) devLoadResult {
	var r devLoadResult
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestDevLoadClientProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		loadClientEnv+"="+st.WSURL(),
		"WSBRIDGE_BENCH_CONNS="+strconv.Itoa(opts.Conns),
		"WSBRIDGE_BENCH_RATE="+strconv.Itoa(opts.Rate),
		"WSBRIDGE_BENCH_DURATION="+opts.Duration.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start load clients: %v", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		// Their cleanups run now; let them finish before the next run or
		// Close, which would otherwise have to do them all.
		deadline := time.Now().Add(2 * time.Minute)
		for st.Gateway.Stats().ConnectionsOpen > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}()
	lines := bufio.NewReader(stdout)
	for {
		line, err := lines.ReadString('\n')
		if err != nil {
			b.Fatalf("load clients ended before connecting %d: %v", opts.Conns, err)
		}
		if strings.TrimSpace(line) == "ready" {
			break
		}
	}
	// Held means open at the gateway and registered: the bridge's index
	// (which fan-outs use) lists every one.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		open := st.Gateway.Stats().ConnectionsOpen
		if open == int64(opts.Conns) && svc.connList(b, subjects.ConnListRequest{Limit: 1}).Total == opts.Conns {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d connections open at the gateway, %d registered", open, opts.Conns,
				svc.connList(b, subjects.ConnListRequest{Limit: 1}).Total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.held = opts.Conns
	r.rss, r.heap, r.goroutines = memoryNow()
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	for {
		line, err := lines.ReadString('\n')
		if err != nil {
			b.Fatalf("load clients ended without a result: %v", err)
		}
		if json.Unmarshal([]byte(line), &r.res) == nil && r.res.Sent > 0 {
			break
		}
	}
	if r.res.Received < r.res.Sent {
		b.Errorf("%d of %d round trips completed", r.res.Received, r.res.Sent)
	}
	return r
}

// TestDevLoadClientProcess is the client half of BenchmarkDevLoad when the
// benchmark re-executes this test binary; otherwise it is skipped.
func TestDevLoadClientProcess(t *testing.T) {
	url := os.Getenv(loadClientEnv)
	if url == "" {
		t.Skip("only runs as BenchmarkDevLoad's client process")
	}
	if err := load.RunLoadClients(context.Background(), url, devLoadOptions(t), os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// devLoadOptions reads the WSBRIDGE_BENCH_* variables.
func devLoadOptions(tb testing.TB) load.LoadOptions {
	opts, err := load.LoadOptionsFromEnv(load.LoadOptions{
		Conns: 1000, Rate: 1000, Duration: 5 * time.Second, Dialers: 64,
	}, os.Getenv)
	if err != nil {
		tb.Fatal(err)
	}
	return opts
}

// memoryNow returns this process's resident set, live heap and goroutines.
func memoryNow() (rss, heap int64, goroutines int) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				rss = kb << 10
			}
		}
	}
	return rss, int64(ms.HeapInuse), runtime.NumGoroutine()
}
