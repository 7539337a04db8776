package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Fault kinds. Each is a class of failure the contract says wsbridge
// survives; -faults picks which ones a run injects.
const (
	FaultBridgeKill = "bridgekill" // SIGKILL a bridge, restart it
	FaultBridgeTerm = "bridgeterm" // SIGTERM a bridge (a hand-off), restart it
	FaultBridgeCut  = "bridgecut"  // cut a bridge from NATS while it still reaches the edges (a zombie)
	FaultNATSKill   = "natskill"   // SIGKILL a NATS node, restart it (never two at once)
	FaultPush503    = "push503"    // the push proxy of an edge answers 503 to some or all pushes
	FaultPushSlow   = "pushslow"   // the push proxy of an edge delays every push
	FaultEdgeKill   = "edgekill"   // SIGKILL an edge, restart it
	FaultEdgeTerm   = "edgeterm"   // SIGTERM an edge, restart it
	FaultStall      = "stall"      // a client stops reading while a burst is pushed to it
)

// AllFaults lists every fault kind, in the order the summary shows them.
var AllFaults = []string{
	FaultBridgeKill, FaultBridgeTerm, FaultBridgeCut, FaultNATSKill,
	FaultPush503, FaultPushSlow, FaultEdgeKill, FaultEdgeTerm, FaultStall,
}

// ParseFaults reads a fault selection: a comma list of kinds, "all", and
// "-kind" to take one out ("all,-natskill"), applied left to right. "none"
// (or an empty string) selects nothing.
func ParseFaults(s string) ([]string, error) {
	set := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "" || f == "none":
		case f == "all":
			for _, k := range AllFaults {
				set[k] = true
			}
		case strings.HasPrefix(f, "-"):
			k := f[1:]
			if !slices.Contains(AllFaults, k) {
				return nil, fmt.Errorf("unknown fault kind %q (kinds: %s)", k, strings.Join(AllFaults, ", "))
			}
			delete(set, k)
		default:
			if !slices.Contains(AllFaults, f) {
				return nil, fmt.Errorf("unknown fault kind %q (kinds: %s)", f, strings.Join(AllFaults, ", "))
			}
			set[f] = true
		}
	}
	var out []string
	for _, k := range AllFaults {
		if set[k] {
			out = append(out, k)
		}
	}
	return out, nil
}

// Repeat rules of the checker.
const (
	// RepeatExact is the contract on `wsbridge gateway`: every command
	// reaches each connection exactly once (the edge drops a push whose
	// Ws-Seq it already wrote).
	RepeatExact = "exact"
	// RepeatLatest is the at-least-once rule of other gateways: after a
	// bridge crash or cut a connection may get its latest push again,
	// never an older one.
	RepeatLatest = "latest"
)

// Config is one run.
type Config struct {
	Seed     int64
	Duration time.Duration // the fault phase: traffic and faults
	Settle   time.Duration // bound on the drain after the fault phase
	Dir      string        // run directory: binaries, data, logs, history

	Nodes, Bridges, Edges int
	Clients               int
	Rate                  float64 // commands published per second
	Faults                []string
	Repeat                string
	FaultEvery            time.Duration // mean interval between faults
	Partitions            int
	// FanOutGrace is how long after a connection opened a fan-out must
	// be published to be owed to it (see check.go).
	FanOutGrace time.Duration
	// StallBytes is the burst pushed to a client that stopped reading.
	StallBytes int
	// ActionEvery is the mean interval between client actions (a client
	// closing, a backend closing a connection).
	ActionEvery time.Duration
	// Verbose logs every fault and process event as it happens.
	Verbose bool
}

// DefaultConfig is `go run ./test/chaos` without flags.
func DefaultConfig() Config {
	return Config{
		Seed: 0, Duration: 10 * time.Minute, Settle: 90 * time.Second,
		Nodes: 3, Bridges: 3, Edges: 2, Clients: 120, Rate: 600,
		Faults: AllFaults, Repeat: RepeatExact, FaultEvery: 3 * time.Second,
		Partitions: 8, FanOutGrace: 0, StallBytes: 6 << 20, ActionEvery: 2 * time.Second,
	}
}

// Validate reports a configuration that cannot run.
func (c Config) Validate() error {
	switch {
	case c.Nodes != 3:
		return fmt.Errorf("nodes %d: the cluster has 3 nodes (replicas 3)", c.Nodes)
	case c.Bridges < 1 || c.Edges < 1:
		return fmt.Errorf("need at least one bridge and one edge (have %d, %d)", c.Bridges, c.Edges)
	case c.Clients < 1:
		return fmt.Errorf("clients %d: need at least one", c.Clients)
	case c.Rate <= 0:
		return fmt.Errorf("rate %v: must be positive", c.Rate)
	case c.Duration <= 0:
		return fmt.Errorf("duration %v: must be positive", c.Duration)
	case c.Repeat != RepeatExact && c.Repeat != RepeatLatest:
		return fmt.Errorf("repeat rule %q: want %s or %s", c.Repeat, RepeatExact, RepeatLatest)
	case c.Partitions < 1:
		return fmt.Errorf("partitions %d: need at least one", c.Partitions)
	}
	return nil
}

// faultList is the canonical spelling of a selection, for the history.
func faultList(fs []string) string {
	if len(fs) == 0 {
		return "none"
	}
	s := slices.Clone(fs)
	sort.Strings(s)
	return strings.Join(s, ",")
}
