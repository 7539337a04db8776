package main

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

// A Plan is everything a seed decides, made before anything starts: the
// clients' users and groups, every command the backends publish (when, what
// kind, to which client, group or user), the client actions (a client
// closing, a backend closing a client) and the fault schedule. Each part has
// its own random stream, so taking a fault kind out does not change the
// traffic. What the plan cannot fix is timing: which connection a client
// has when its send is due, and so the tokens, come from the run.
type Plan struct {
	Seed    int64
	Clients []ClientPlan
	Traffic []PlannedMsg
	Actions []Action
	Faults  []Fault
}

// ClientPlan is who a client is: the auth responder gives every connection
// of client i this user and these groups.
type ClientPlan struct {
	User   string
	Groups []string
}

// Message kinds of the history (the bridge's dead-letter kinds, plus bulk:
// a large send pushed at a client that stopped reading).
const (
	KindSend      = "send"
	KindBulk      = "bulk"
	KindBroadcast = "broadcast"
	KindGroup     = "group"
	KindUser      = "user"
	KindClose     = "close"
)

// PlannedMsg is one command of the traffic plan.
type PlannedMsg struct {
	ID      string
	At      time.Duration // from the start of the fault phase
	Kind    string
	Client  int    // send, close: the client whose current connection it goes to
	Group   string // group
	User    string // user
	Exclude []int  // broadcast: clients whose current connections are excluded
	Size    int    // body size (bulk)
}

// Client action kinds.
const (
	ActionClientClose  = "client-close"  // the client closes (1000) and reconnects later
	ActionBackendClose = "backend-close" // a backend publishes P.out.close.T for it
)

// Action is a planned client action.
type Action struct {
	At     time.Duration
	Kind   string
	Client int
	// Pause is how long the client stays away before it reconnects.
	Pause time.Duration
}

// Fault is one planned fault.
type Fault struct {
	N      int
	At     time.Duration
	Kind   string
	Target int           // bridge, node, edge or client index
	Dur    time.Duration // how long the fault lasts (down time before a restart)
	Frac   float64       // push503: share of pushes refused
	Delay  time.Duration // pushslow: added to every push
	Mode   string        // bridgecut: "blackhole" or "reset"
}

func (f Fault) String() string {
	s := fmt.Sprintf("#%d %s %s for %v", f.N, f.Kind, f.targetName(), f.Dur.Round(time.Millisecond))
	switch f.Kind {
	case FaultPush503:
		s += fmt.Sprintf(" (%.0f%% of pushes)", f.Frac*100)
	case FaultPushSlow:
		s += fmt.Sprintf(" (+%v a push)", f.Delay.Round(time.Millisecond))
	case FaultBridgeCut:
		s += " (" + f.Mode + ")"
	}
	return s
}

func (f Fault) targetName() string {
	switch f.Kind {
	case FaultBridgeKill, FaultBridgeTerm, FaultBridgeCut:
		return fmt.Sprintf("bridge-%d", f.Target+1)
	case FaultNATSKill:
		return fmt.Sprintf("nats-%d", f.Target+1)
	case FaultPush503, FaultPushSlow:
		return fmt.Sprintf("push-proxy-%d", f.Target+1)
	case FaultEdgeKill, FaultEdgeTerm:
		return fmt.Sprintf("edge-%d", f.Target+1)
	case FaultStall:
		return fmt.Sprintf("client-%d", f.Target)
	}
	return "?"
}

// Random streams of a plan.
const (
	streamClients = iota + 1
	streamTraffic
	streamActions
	streamFaults
)

func rng(seed int64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), stream))
}

func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)+1))
}

// Traffic mix: shares of the commands published (the rest are direct
// sends), and broadcasts per second (each one is a push to every client,
// so they are counted apart).
const (
	shareUser          = 0.08
	shareGroup         = 0.04
	broadcastsPerSec   = 0.5
	clientsPerGroup    = 8
	clientsPerUser     = 2
	bulkMessageBytes   = 64 << 10
	maxExcluded        = 3
	minFaultSpacing    = 1 * time.Second
	processStartMargin = 10 * time.Second // plan-time allowance for a restart to be up
	natsCatchUpMargin  = 20 * time.Second // and for a NATS node to catch up
)

// NewPlan makes the plan of cfg.Seed.
func NewPlan(cfg Config) Plan {
	p := Plan{Seed: cfg.Seed}
	groups := max(1, cfg.Clients/clientsPerGroup)
	r := rng(cfg.Seed, streamClients)
	for i := 0; i < cfg.Clients; i++ {
		cp := ClientPlan{User: fmt.Sprintf("u%d", i/clientsPerUser)}
		g1 := r.IntN(groups)
		cp.Groups = []string{fmt.Sprintf("g%d", g1)}
		if r.IntN(2) == 0 && groups > 1 {
			g2 := (g1 + 1 + r.IntN(groups-1)) % groups
			cp.Groups = append(cp.Groups, fmt.Sprintf("g%d", g2))
		}
		p.Clients = append(p.Clients, cp)
	}
	users := (cfg.Clients + clientsPerUser - 1) / clientsPerUser

	r = rng(cfg.Seed, streamTraffic)
	n := int(cfg.Rate * cfg.Duration.Seconds())
	step := time.Duration(float64(time.Second) / cfg.Rate)
	bcastEvery := cfg.Rate / broadcastsPerSec // one broadcast per this many commands
	for i := 0; i < n; i++ {
		m := PlannedMsg{ID: fmt.Sprintf("m%d", i), At: time.Duration(i) * step}
		x := r.Float64()
		switch {
		case bcastEvery >= 1 && r.Float64() < 1/bcastEvery:
			m.Kind = KindBroadcast
			for k := r.IntN(maxExcluded + 1); k > 0; k-- {
				m.Exclude = append(m.Exclude, r.IntN(cfg.Clients))
			}
		case x < shareUser:
			m.Kind, m.User = KindUser, fmt.Sprintf("u%d", r.IntN(users))
		case x < shareUser+shareGroup:
			m.Kind, m.Group = KindGroup, fmt.Sprintf("g%d", r.IntN(groups))
		default:
			m.Kind, m.Client = KindSend, r.IntN(cfg.Clients)
		}
		p.Traffic = append(p.Traffic, m)
	}

	r = rng(cfg.Seed, streamActions)
	if cfg.ActionEvery > 0 {
		for at := between(r, cfg.ActionEvery/2, cfg.ActionEvery*3/2); at < cfg.Duration; at += between(r, cfg.ActionEvery/2, cfg.ActionEvery*3/2) {
			a := Action{At: at, Kind: ActionClientClose, Client: r.IntN(cfg.Clients), Pause: between(r, 100*time.Millisecond, 2*time.Second)}
			if r.IntN(2) == 0 {
				a.Kind = ActionBackendClose
			}
			p.Actions = append(p.Actions, a)
		}
	}

	p.Faults = planFaults(cfg)
	return p
}

// busy is a plan-time occupancy: a target from..until.
type busy struct {
	kind        string // "bridge", "node", "edge", "proxy", "client"
	target      int
	from, until time.Duration
}

// planFaults draws the fault schedule: one every cfg.FaultEvery on average
// (between half and one and a half of it), each of a kind drawn from the
// selection, on a target that is free by the plan's reckoning. At most two
// bridges are disturbed at once (one always serves), at most one edge (its
// clients need the other), one NATS node (with time to catch up before the
// next), one fault per push proxy and two stalled clients.
func planFaults(cfg Config) []Fault {
	if len(cfg.Faults) == 0 || cfg.FaultEvery <= 0 {
		return nil
	}
	r := rng(cfg.Seed, streamFaults)
	var out []Fault
	var held []busy
	overlapping := func(kind string, from, until time.Duration) (n int, targets map[int]bool) {
		targets = map[int]bool{}
		for _, b := range held {
			if b.kind == kind && b.from < until && from < b.until {
				n++
				targets[b.target] = true
			}
		}
		return n, targets
	}
	for at := between(r, 2*time.Second, 4*time.Second); at < cfg.Duration; at += max(minFaultSpacing, between(r, cfg.FaultEvery/2, cfg.FaultEvery*3/2)) {
		for try := 0; try < 5; try++ {
			f := Fault{N: len(out) + 1, At: at, Kind: cfg.Faults[r.IntN(len(cfg.Faults))]}
			var class string
			var count, limit int
			var margin time.Duration
			switch f.Kind {
			case FaultBridgeKill, FaultBridgeTerm:
				class, count, limit, margin = "bridge", cfg.Bridges, 2, processStartMargin
				f.Dur = between(r, 500*time.Millisecond, 5*time.Second)
			case FaultBridgeCut:
				class, count, limit, margin = "bridge", cfg.Bridges, 2, 2*time.Second
				f.Dur = between(r, 3*time.Second, 12*time.Second)
				f.Mode = "blackhole"
				if r.IntN(2) == 0 {
					f.Mode = "reset"
				}
			case FaultNATSKill:
				class, count, limit, margin = "node", cfg.Nodes, 1, natsCatchUpMargin
				f.Dur = between(r, 2*time.Second, 8*time.Second)
			case FaultPush503:
				class, count, limit = "proxy", cfg.Edges, cfg.Edges
				f.Dur = between(r, 500*time.Millisecond, 4*time.Second)
				f.Frac = 1
				if r.IntN(2) == 0 {
					f.Frac = 0.5
				}
			case FaultPushSlow:
				class, count, limit = "proxy", cfg.Edges, cfg.Edges
				f.Dur = between(r, time.Second, 6*time.Second)
				f.Delay = between(r, 50*time.Millisecond, 1500*time.Millisecond)
			case FaultEdgeKill, FaultEdgeTerm:
				class, count, limit, margin = "edge", cfg.Edges, max(1, cfg.Edges-1), processStartMargin
				f.Dur = between(r, time.Second, 4*time.Second)
			case FaultStall:
				class, count, limit, margin = "client", cfg.Clients, 2, 5*time.Second
				f.Dur = between(r, 4*time.Second, 8*time.Second)
			}
			if class == "edge" && cfg.Edges < 2 {
				continue // its clients would have nowhere to go
			}
			f.Target = r.IntN(count)
			until := at + f.Dur + margin
			n, targets := overlapping(class, at, until)
			if n >= limit || targets[f.Target] {
				continue
			}
			held = append(held, busy{kind: class, target: f.Target, from: at, until: until})
			out = append(out, f)
			break
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out
}

// Counts of a plan, for the run's first lines.
func (p Plan) describe() string {
	kinds := map[string]int{}
	for _, m := range p.Traffic {
		kinds[m.Kind]++
	}
	faults := map[string]int{}
	for _, f := range p.Faults {
		faults[f.Kind]++
	}
	return fmt.Sprintf("%d commands (send %d, user %d, group %d, broadcast %d), %d client actions, %d faults %v",
		len(p.Traffic), kinds[KindSend], kinds[KindUser], kinds[KindGroup], kinds[KindBroadcast], len(p.Actions), len(p.Faults), faults)
}
