// Command chaos runs the whole of wsbridge — a three-node NATS cluster with
// JetStream, several bridges, several `wsbridge gateway` edges, real
// WebSocket clients and backends publishing through JetStream — as separate
// processes on 127.0.0.1, piles seeded faults on it, and then checks every
// message: nothing stored is lost, each connection gets its pushes in order
// and once, every connection that ended gets one disconnect event, and every
// process is healthy at the end.
//
//	go run ./test/chaos -duration 10m -seed 42
//	go run ./test/chaos -duration 3m -faults all,-natskill -repeat latest
//	go run ./test/chaos -check /tmp/wsbridge-chaos-42-…/history.jsonl
//
// Bridges reach NATS through TCP proxies the runner cuts, and the edges
// through HTTP proxies (their advertised --push-url) that answer 503 or
// slow down. A seed fixes the fault schedule and the traffic plan: the same
// seed replays them. The run directory keeps the binaries, the processes'
// logs, the history (JSON lines) and the summary. The checker's rules are
// in check.go; `go test ./test/chaos` is the short form CI runs.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := DefaultConfig()
	faults := fs.String("faults", "all", "fault kinds: a comma list of "+faultList(AllFaults)+", 'all', '-kind' to leave one out (all,-natskill), or none")
	fs.Int64Var(&cfg.Seed, "seed", 0, "seed of the fault schedule and traffic plan (0: from the clock; printed, replays the run)")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of the fault phase")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "longest wait for the system to drain after the fault phase")
	fs.StringVar(&cfg.Dir, "dir", "", "run directory (default: a new one under the temporary directory, kept)")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "WebSocket clients")
	fs.IntVar(&cfg.Bridges, "bridges", cfg.Bridges, "bridge processes")
	fs.IntVar(&cfg.Edges, "edges", cfg.Edges, "edge (wsbridge gateway) processes")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "commands published per second")
	fs.StringVar(&cfg.Repeat, "repeat", cfg.Repeat, "repeat rule: exact (each command once per connection) or latest (only the latest push may repeat)")
	fs.DurationVar(&cfg.FaultEvery, "fault-every", cfg.FaultEvery, "mean interval between faults")
	fs.DurationVar(&cfg.ActionEvery, "action-every", cfg.ActionEvery, "mean interval between client actions (closes; 0: none)")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "the bridges' --partitions")
	fs.DurationVar(&cfg.FanOutGrace, "fanout-grace", cfg.FanOutGrace, "a fan-out is owed to connections open this long before it was published")
	fs.IntVar(&cfg.StallBytes, "stall-bytes", cfg.StallBytes, "bytes pushed at a client that stopped reading")
	fs.BoolVar(&cfg.Verbose, "v", false, "log every fault's end too")
	check := fs.String("check", "", "check a history file again instead of running (the -repeat and -fanout-grace given apply)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if cfg.Faults, err = ParseFaults(*faults); err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 2
	}
	if *check != "" {
		return recheck(*check, cfg, fs, stdout, stderr)
	}
	if cfg.Seed == 0 {
		cfg.Seed = time.Now().UnixNano() % 1_000_000_000
	}
	if cfg.Dir == "" {
		if cfg.Dir, err = os.MkdirTemp("", fmt.Sprintf("wsbridge-chaos-%d-", cfg.Seed)); err != nil {
			fmt.Fprintln(stderr, "chaos:", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := Run(ctx, cfg, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "chaos: seed %d: %v (run directory %s)\n", cfg.Seed, err, cfg.Dir)
		return 1
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, res.Summary)
	if res.Report.Failed() {
		return 1
	}
	return 0
}

// recheck runs the checker on a history file.
func recheck(path string, cfg Config, fs *flag.FlagSet, stdout, stderr io.Writer) int {
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintln(stderr, "chaos:", err)
		return 1
	}
	defer f.Close()
	h, err := ReadHistory(f)
	if err != nil {
		fmt.Fprintf(stderr, "chaos: %s: %v\n", path, err)
		return 1
	}
	ck := Checker{Repeat: h.Run.Repeat, FanOutGrace: cfg.FanOutGrace}
	if d, err := time.ParseDuration(h.Run.FanOutGrace); err == nil {
		ck.FanOutGrace = d
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "repeat":
			ck.Repeat = cfg.Repeat
			h.Run.Repeat = cfg.Repeat
		case "fanout-grace":
			ck.FanOutGrace = cfg.FanOutGrace
			h.Run.FanOutGrace = cfg.FanOutGrace.String()
		}
	})
	if h.Run.Dir == "" {
		h.Run.Dir = filepath.Dir(path)
	}
	rep := ck.Check(h)
	fmt.Fprint(stdout, Summary(cfg, h, rep, nil))
	if rep.Failed() {
		return 1
	}
	return 0
}
