package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ciFaults is the fault selection of TestChaos: every kind, NATS node kills
// included. Any finding fails the test.
const ciFaults = "all"

var (
	chaosSeed   = flag.Int64("chaos.seed", 0, "seed of TestChaos (0: $CHAOS_SEED, else from the clock)")
	chaosFaults = flag.String("chaos.faults", ciFaults, "fault kinds of TestChaos (see -faults of the command)")
	chaosRepeat = flag.String("chaos.repeat", RepeatExact, "repeat rule of TestChaos: exact or latest")
)

// TestChaos is the short form of the chaos run that CI runs: the same
// processes (three NATS nodes, three bridges, two edges), 32 clients, 150
// commands a second, 45 s of faults. It prints its seed; -chaos.seed or
// CHAOS_SEED replays it. A failing run keeps its directory (history,
// summary, findings, process logs) and names it.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a NATS cluster, bridges and edges as processes for about 80 s")
	}
	seed := *chaosSeed
	if seed == 0 {
		if s := os.Getenv("CHAOS_SEED"); s != "" {
			var err error
			if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
				t.Fatalf("CHAOS_SEED=%q: %v", s, err)
			}
		}
	}
	if seed == 0 {
		seed = time.Now().UnixNano() % 1_000_000_000
	}
	// Said before anything can go wrong: a run killed by a timeout still
	// leaves its seed in the log.
	fmt.Fprintf(os.Stderr, "TestChaos: seed %d (replay: go test ./test/chaos -run TestChaos -chaos.seed %d)\n", seed, seed)
	t.Logf("seed %d", seed)

	cfg := DefaultConfig()
	cfg.Seed = seed
	// Sized for a loaded 2-core machine (CI runs other packages beside
	// it): a drain that keeps going may take up to three times Settle.
	cfg.Duration, cfg.Settle = 45*time.Second, 45*time.Second
	cfg.Clients, cfg.Rate = 32, 150
	cfg.StallBytes = 5 << 20
	cfg.Repeat = *chaosRepeat
	var err error
	if cfg.Faults, err = ParseFaults(*chaosFaults); err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: a failing run's files must outlive the test.
	if cfg.Dir, err = os.MkdirTemp("", fmt.Sprintf("wsbridge-chaos-test-%d-", seed)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg, &testLog{t: t})
	if err != nil {
		t.Fatalf("seed %d: the run did not complete: %v (run directory %s kept)", seed, err, cfg.Dir)
	}
	if len(res.Report.Findings) > 0 {
		t.Errorf("seed %d: promises broken; run directory %s kept (history %s)\n%s", seed, res.Dir, res.History, res.Summary)
		return
	}
	t.Logf("seed %d passed\n%s", seed, res.Summary)
	// Nothing to look at in a clean run; the binaries and NATS data are
	// the bulk of it.
	_ = os.RemoveAll(cfg.Dir)
}

// testLog hands the runner's progress lines to t.Log, one a call.
type testLog struct {
	t    *testing.T
	mu   sync.Mutex
	part string
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part += string(p)
	for {
		line, rest, ok := strings.Cut(l.part, "\n")
		if !ok {
			break
		}
		l.t.Log(line)
		l.part = rest
	}
	return len(p), nil
}
