package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// Settings every process of a run gets (the faults are tuned to them: a
// bridge cut or killed loses its partitions after the lease TTL, an edge
// killed is announced lost after two instance TTLs).
const (
	pushToken    = "chaos-push-token"
	instanceTTL  = 3 * time.Second
	writeTimeout = 2 * time.Second
)

// Runner is one chaos run: the processes, proxies, clients and backends,
// and the history they leave.
type Runner struct {
	cfg  Config
	plan Plan
	out  io.Writer
	hist *historyWriter

	wsbridgeBin, natsBin string
	nodes                []*natsNode
	bridges              []*bridgeProc
	edges                []*edgeProc
	clients              []*client

	nc    *nats.Conn
	js    jetstream.JetStream
	names subjects.Names
	auth  *authResponder
	pub   *publisher

	dialFailures  atomic.Int64
	clientsCancel context.CancelFunc
	clientsWG     sync.WaitGroup

	connMu    sync.Mutex
	finalized bool
	logMu     sync.Mutex
	start     time.Time
}

type natsNode struct {
	proc                     *proc
	port, clusterPort, mPort int
}

func (n *natsNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

type bridgeProc struct {
	proc    *proc
	proxies []*tcpProxy // one per node
	http    int
}

type edgeProc struct {
	proc      *proc
	proxy     *pushProxy
	wsURL     string
	ops       string
	addr      int
	pushAddr  int
	instances string

	mu    sync.Mutex
	going string // the fault stopping it, while it does
}

// Result is what a run returns: the report and where its files are.
type Result struct {
	Report  *Report
	Summary string
	History string
	Dir     string
}

func (r *Runner) logf(format string, a ...any) {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	el := time.Duration(0)
	if !r.start.IsZero() {
		el = time.Since(r.start).Round(100 * time.Millisecond)
	}
	fmt.Fprintf(r.out, "[chaos %7s] %s\n", el, fmt.Sprintf(format, a...))
}

// Run carries out one run in cfg.Dir and checks it.
func Run(ctx context.Context, cfg Config, out io.Writer) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	r := &Runner{cfg: cfg, plan: NewPlan(cfg), out: out, names: subjects.MustNew(subjects.DefaultPrefix)}
	histPath := filepath.Join(cfg.Dir, "history.jsonl")
	hw, err := newHistoryWriter(histPath)
	if err != nil {
		return nil, err
	}
	r.hist = hw
	defer hw.close()
	r.logf("seed %d (replay: -seed %d), faults %s, repeat rule %s, run directory %s", cfg.Seed, cfg.Seed, faultList(cfg.Faults), cfg.Repeat, cfg.Dir)
	r.logf("plan: %s", r.plan.describe())
	hw.add(RunRec{T: "run", Seed: cfg.Seed, Start: time.Now(), Duration: cfg.Duration.String(), Faults: faultList(cfg.Faults),
		Repeat: cfg.Repeat, Clients: cfg.Clients, Rate: cfg.Rate, Bridges: cfg.Bridges, Edges: cfg.Edges,
		FanOutGrace: cfg.FanOutGrace.String(), Partitions: cfg.Partitions, Dir: cfg.Dir})
	stopFlush := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopFlush:
				return
			case <-time.After(time.Second):
				_ = hw.flush()
			}
		}
	}()
	defer close(stopFlush)

	defer r.shutdown()
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	if err := r.faultPhase(ctx); err != nil {
		return nil, err
	}
	r.settle(ctx)
	r.finalize()
	r.health()
	if err := r.collect(ctx); err != nil {
		return nil, fmt.Errorf("read back WS_IN and WS_DLQ: %w", err)
	}
	if err := hw.flush(); err != nil {
		return nil, fmt.Errorf("history %s: %w", histPath, err)
	}
	rep := Checker{Repeat: cfg.Repeat, FanOutGrace: cfg.FanOutGrace}.Check(hw.history())
	summary := Summary(cfg, hw.history(), rep, r.logPaths())
	if err := os.WriteFile(filepath.Join(cfg.Dir, "summary.txt"), []byte(summary), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "findings.txt"), []byte(FindingsText(rep)), 0o644); err != nil {
		return nil, err
	}
	return &Result{Report: rep, Summary: summary, History: histPath, Dir: cfg.Dir}, nil
}

// setup builds the binaries and starts everything, in the order a
// deployment would: the NATS cluster, one bridge (it provisions the streams
// with three replicas), the other bridges, the edges, the clients.
func (r *Runner) setup(ctx context.Context) error {
	cfg := r.cfg
	bin := filepath.Join(cfg.Dir, "bin")
	r.logf("building wsbridge and nats-server into %s", bin)
	var err error
	if r.wsbridgeBin, r.natsBin, err = buildBinaries(bin); err != nil {
		return err
	}
	r.start = time.Now()
	logs := filepath.Join(cfg.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}

	// NATS: three nodes routed to each other. no_advertise keeps clients
	// on the URLs they were given, so a bridge's NATS traffic all goes
	// through its proxies.
	ports, err := freePorts(3 * cfg.Nodes)
	if err != nil {
		return err
	}
	var routes []string
	for i := 0; i < cfg.Nodes; i++ {
		n := &natsNode{port: ports[3*i], clusterPort: ports[3*i+1], mPort: ports[3*i+2]}
		r.nodes = append(r.nodes, n)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", n.clusterPort))
	}
	for i, n := range r.nodes {
		name := fmt.Sprintf("nats-%d", i+1)
		conf := filepath.Join(cfg.Dir, name+".conf")
		text := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
logtime: true
jetstream { store_dir: %q }
cluster {
  name: chaos
  listen: 127.0.0.1:%d
  routes: [%s]
  no_advertise: true
}
`, name, n.port, n.mPort, filepath.Join(cfg.Dir, "data", name), n.clusterPort, strings.Join(routes, ", "))
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return err
		}
		health := fmt.Sprintf("http://127.0.0.1:%d/healthz", n.mPort)
		n.proc = &proc{r: r, name: name, bin: r.natsBin, args: []string{"-c", conf}, log: filepath.Join(logs, name+".log"),
			readyAt: health, healthy: health}
	}
	for _, n := range r.nodes {
		if err := n.proc.start(); err != nil {
			return err
		}
	}
	for _, n := range r.nodes {
		if err := n.proc.waitReady(ctx, 60*time.Second); err != nil {
			return err
		}
	}
	var urls []string
	for _, n := range r.nodes {
		urls = append(urls, n.url())
	}
	r.nc, err = nats.Connect(strings.Join(urls, ","), nats.Name("chaos-runner"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.ReconnectBufSize(64<<20))
	if err != nil {
		return fmt.Errorf("runner's NATS connection: %w", err)
	}
	if r.js, err = jetstream.New(r.nc); err != nil {
		return err
	}
	r.logf("NATS cluster of %d nodes up", cfg.Nodes)

	// Edges' addresses first: the bridges' --push-url names one.
	eports, err := freePorts(3 * cfg.Edges)
	if err != nil {
		return err
	}
	for i := 0; i < cfg.Edges; i++ {
		e := &edgeProc{addr: eports[3*i], pushAddr: eports[3*i+1], instances: fmt.Sprintf("edge-%d", i+1)}
		e.wsURL = fmt.Sprintf("ws://127.0.0.1:%d/ws", e.addr)
		e.ops = fmt.Sprintf("http://127.0.0.1:%d", eports[3*i+2])
		if e.proxy, err = newPushProxy(fmt.Sprintf("http://127.0.0.1:%d", e.pushAddr)); err != nil {
			return err
		}
		e.proc = &proc{r: r, name: e.instances, bin: r.wsbridgeBin, log: filepath.Join(logs, e.instances+".log"),
			readyAt: e.ops + "/readyz", healthy: e.ops + "/healthz",
			args: []string{"gateway", "--nats-url", strings.Join(urls, ","),
				"--addr", fmt.Sprintf("127.0.0.1:%d", e.addr), "--push-addr", fmt.Sprintf("127.0.0.1:%d", e.pushAddr),
				"--push-url", e.proxy.url(), "--http-addr", strings.TrimPrefix(e.ops, "http://"),
				"--push-token", pushToken, "--instance-id", e.instances, "--instance-ttl", instanceTTL.String(),
				"--auth", "required", "--write-timeout", writeTimeout.String(), "--log-level", "info"}}
		r.edges = append(r.edges, e)
	}

	bports, err := freePorts(cfg.Bridges)
	if err != nil {
		return err
	}
	for i := 0; i < cfg.Bridges; i++ {
		b := &bridgeProc{http: bports[i]}
		var purls []string
		for _, n := range r.nodes {
			p, err := newTCPProxy(fmt.Sprintf("127.0.0.1:%d", n.port))
			if err != nil {
				return err
			}
			b.proxies = append(b.proxies, p)
			purls = append(purls, "nats://"+p.addr())
		}
		name := fmt.Sprintf("bridge-%d", i+1)
		ops := fmt.Sprintf("http://127.0.0.1:%d", b.http)
		b.proc = &proc{r: r, name: name, bin: r.wsbridgeBin, log: filepath.Join(logs, name+".log"),
			readyAt: ops + "/readyz", healthy: ops + "/healthz",
			args: []string{"bridge", "--nats-url", strings.Join(purls, ","), "--http-addr", fmt.Sprintf("127.0.0.1:%d", b.http),
				"--push-url", r.edges[0].proxy.url(), "--push-token", pushToken, "--replicas", "3",
				"--partitions", fmt.Sprint(cfg.Partitions), "--retry-backoff", "100ms", "--retry-backoff-max", "2s",
				"--log-level", "info"}}
		r.bridges = append(r.bridges, b)
	}
	// The first bridge provisions the streams; the cluster may still be
	// electing, and a bridge that cannot provision exits (and is
	// restarted by its supervisor, as here).
	if err := r.bridges[0].proc.start(); err != nil {
		return err
	}
	if err := r.bridges[0].proc.waitReady(ctx, 90*time.Second); err != nil {
		return err
	}
	for _, b := range r.bridges[1:] {
		if err := b.proc.start(); err != nil {
			return err
		}
	}
	for _, b := range r.bridges[1:] {
		if err := b.proc.waitReady(ctx, 90*time.Second); err != nil {
			return err
		}
	}
	for _, s := range []string{r.names.StreamIn(), r.names.StreamOut(), r.names.StreamDLQ()} {
		st, err := r.js.Stream(ctx, s)
		if err != nil {
			return fmt.Errorf("stream %s: %w", s, err)
		}
		if n := st.CachedInfo().Config.Replicas; n != 3 {
			return fmt.Errorf("stream %s has %d replicas, want 3", s, n)
		}
	}
	r.logf("%d bridges ready; streams replicated 3 times", cfg.Bridges)

	if r.auth, err = startAuth(r); err != nil {
		return err
	}
	for _, e := range r.edges {
		if err := e.proc.start(); err != nil {
			return err
		}
	}
	for _, e := range r.edges {
		if err := e.proc.waitReady(ctx, 60*time.Second); err != nil {
			return err
		}
	}
	r.logf("%d edges ready", cfg.Edges)

	r.pub = newPublisher(r)
	for i := 0; i < cfg.Clients; i++ {
		r.clients = append(r.clients, &client{r: r, idx: i, plan: r.plan.Clients[i]})
	}
	return nil
}

// faultPhase runs the clients, the traffic, the client actions and the
// faults for cfg.Duration.
func (r *Runner) faultPhase(ctx context.Context) error {
	cctx, cancelClients := context.WithCancel(ctx)
	r.clientsCancel = cancelClients
	for _, c := range r.clients {
		r.clientsWG.Add(1)
		go func() {
			defer r.clientsWG.Done()
			c.run(cctx)
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		open := 0
		for _, c := range r.clients {
			if c.current() != nil {
				open++
			}
		}
		if open == len(r.clients) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d clients connected within 60s (dial failures %d)", open, len(r.clients), r.dialFailures.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.logf("%d clients connected; fault phase of %v begins", len(r.clients), r.cfg.Duration)

	phase := time.Now()
	fctx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); r.pub.traffic(ctx, phase) }()
	go func() { defer wg.Done(); r.actions(fctx, phase) }()
	go func() { defer wg.Done(); r.faults(fctx, phase) }()

	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	end := time.After(r.cfg.Duration)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-end:
			done = true
		case <-progress.C:
			r.logf("progress: %s", r.pub.progress())
		}
	}
	r.logf("fault phase over; ending the faults in progress")
	stopFaults()
	wg.Wait()
	return nil
}

// settle waits (at most cfg.Settle) for every process to be ready, every
// client connected, WS_OUT resolved (every command pushed or dead-lettered
// by every partition, as their committed positions say) and the edges' lost
// announcements made.
func (r *Runner) settle(ctx context.Context) {
	r.logf("settle: waiting for %d commands still being published", len(r.pub.jobs))
	r.pub.wait()
	for _, c := range r.clients {
		c.resume()
	}
	start := time.Now()
	deadline := start.Add(r.cfg.Settle)
	// A loaded machine drains slowly: while WS_OUT keeps shrinking the
	// wait goes on, up to three times the bound.
	hardDeadline := start.Add(3 * r.cfg.Settle)
	var lastMsgs uint64
	lastShrink := start
	// A killed edge's connections are announced within two instance TTLs.
	quietUntil := start.Add(2*instanceTTL + 2*time.Second)
	var why string
	var msgs uint64
	drained := false
	said := start
	for {
		why = ""
		for _, p := range r.allProcs() {
			if !p.isReady() {
				why = p.name + " not ready"
				break
			}
		}
		if why == "" {
			for _, c := range r.clients {
				if c.current() == nil {
					why = fmt.Sprintf("client %d not connected", c.idx)
					break
				}
			}
		}
		if why == "" {
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			left, err := subjects.Unresolved(ictx, r.js, r.names)
			cancel()
			switch {
			case err != nil:
				why = "positions: " + err.Error()
			case left > 0:
				msgs = left
				why = fmt.Sprintf("WS_OUT holds %d commands not resolved by every partition", msgs)
				if lastMsgs == 0 || msgs < lastMsgs {
					lastMsgs, lastShrink = msgs, time.Now()
				}
			default:
				msgs = 0
			}
		}
		if why == "" && time.Now().After(quietUntil) {
			drained = true
			break
		}
		if now := time.Now(); now.After(deadline) && (now.After(hardDeadline) || now.Sub(lastShrink) > 10*time.Second) {
			break
		}
		if time.Since(said) > 10*time.Second {
			said = time.Now()
			r.logf("settle: %s", why)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if drained {
		// Frames the edges wrote just before WS_OUT emptied are still on
		// their way through the sockets.
		time.Sleep(time.Second)
	} else {
		why += "; " + r.consumerState(ctx)
	}
	r.hist.add(DrainRec{T: "drain", At: time.Now(), Drained: drained, OutMsgs: msgs,
		Waited: time.Since(start).Round(time.Millisecond).String(), Detail: why, LiveConns: r.liveConns()})
	r.logf("settle: drained=%v after %v %s", drained, time.Since(start).Round(time.Millisecond), why)
}

// consumerState describes the partition consumers that still hold or owe
// messages, for a drain that did not finish.
func (r *Runner) consumerState(ctx context.Context) string {
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := r.js.Stream(ictx, r.names.StreamOut())
	if err != nil {
		return err.Error()
	}
	info := st.CachedInfo()
	kv, err := r.js.KeyValue(ictx, r.names.Positions())
	if err != nil {
		return err.Error()
	}
	var parts []string
	for p := 0; p < r.names.OutPartitions(info.Config); p++ {
		pos, _, _, err := subjects.ReadPosition(ictx, kv, p, info.Created, info.State.FirstSeq)
		switch {
		case err != nil:
			parts = append(parts, fmt.Sprintf("partition %d: %v", p, err))
		case pos.Low() <= info.State.LastSeq:
			parts = append(parts, fmt.Sprintf("partition %d at %d (%d pending, owner %s)", p, pos.Low(), len(pos.Pending), pos.Owner))
		}
	}
	return fmt.Sprintf("log %d..%d; ", info.State.FirstSeq, info.State.LastSeq) + strings.Join(parts, ", ")
}

func (r *Runner) liveConns() int {
	n := 0
	for _, c := range r.clients {
		if c.current() != nil {
			n++
		}
	}
	return n
}

// connEnded records a connection that ended during the run.
func (r *Runner) connEnded(w *wsConn) {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	if r.finalized {
		return
	}
	w.mu.Lock()
	w.recorded = true
	w.mu.Unlock()
	r.hist.add(w.snapshot())
}

// finalize takes the history of the connections: those still open are
// recorded as open, and nothing that ends afterwards is recorded.
func (r *Runner) finalize() {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	r.finalized = true
	for _, c := range r.clients {
		c.mu.Lock()
		conns := append([]*wsConn(nil), c.conns...)
		c.mu.Unlock()
		for _, w := range conns {
			w.mu.Lock()
			recorded := w.recorded
			w.mu.Unlock()
			if !recorded {
				rec := w.snapshot()
				if !rec.Ended {
					// A backend close may still be on its way.
					rec.End = time.Time{}
					w.mu.Lock()
					rec.Causes = append([]Cause(nil), w.causes...)
					w.mu.Unlock()
				}
				r.hist.add(rec)
			}
		}
	}
}

// health records, for every process, whether it runs and answers /healthz.
func (r *Runner) health() {
	bad := 0
	for _, p := range r.allProcs() {
		detail := "ok"
		switch {
		case !p.running():
			detail = "not running"
		case !httpOK(p.healthy):
			detail = "/healthz does not answer 200"
		}
		if detail != "ok" {
			bad++
		}
		r.hist.add(ProcRec{T: "proc", Name: p.name, Event: "health", At: time.Now(), Detail: detail, Log: p.log})
	}
	r.logf("health at the end: %d of %d processes unhealthy", bad, len(r.allProcs()))
}

func (r *Runner) allProcs() []*proc {
	var out []*proc
	for _, n := range r.nodes {
		out = append(out, n.proc)
	}
	for _, b := range r.bridges {
		out = append(out, b.proc)
	}
	for _, e := range r.edges {
		out = append(out, e.proc)
	}
	return out
}

func (r *Runner) logPaths() []string {
	var out []string
	for _, p := range r.allProcs() {
		out = append(out, p.log)
	}
	return out
}

// shutdown stops everything the run started: clients, then edges, bridges
// and NATS nodes (each SIGTERM, SIGKILL after a grace), then the proxies.
func (r *Runner) shutdown() {
	if r.clientsCancel != nil {
		r.clientsCancel()
	}
	for _, c := range r.clients {
		c.stop()
	}
	r.clientsWG.Wait()
	var wg sync.WaitGroup
	stopAll := func(ps []*proc, grace time.Duration) {
		for _, p := range ps {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop(grace) }()
		}
		wg.Wait()
	}
	var edges, bridges, nodes []*proc
	for _, e := range r.edges {
		edges = append(edges, e.proc)
	}
	for _, b := range r.bridges {
		bridges = append(bridges, b.proc)
	}
	for _, n := range r.nodes {
		nodes = append(nodes, n.proc)
	}
	stopAll(edges, 15*time.Second)
	stopAll(bridges, 20*time.Second)
	if r.auth != nil {
		r.auth.stop()
	}
	if r.nc != nil {
		r.nc.Close()
	}
	stopAll(nodes, 10*time.Second)
	for _, e := range r.edges {
		if e.proxy != nil {
			e.proxy.close()
		}
	}
	for _, b := range r.bridges {
		for _, p := range b.proxies {
			p.close()
		}
	}
}
