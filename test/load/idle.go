package load

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/test/buildtest"
)

// IdleOptions configure Idle; zero fields take the defaults shown.
type IdleOptions struct {
	// Binary is the wsbridge binary to run; built from this module when
	// empty.
	Binary       string
	Conns        int           // connections held at the end, 19,000
	Low          int           // connections at the first measurement, 2,000
	PingInterval time.Duration // the gateway's --ping-interval, 10s
	// Window is how long the clients count the pings they get, once every
	// connection is open and settled: 35s.
	Window time.Duration
	Settle time.Duration // wait before each memory measurement, 10s
	// PerProcess bounds the clients of one client process, 5,000.
	PerProcess int
	// ClientCmd returns the command of one client process; it must call
	// RunIdleClients with the environment variable it is given (spec) and
	// its stdin and stdout.
	ClientCmd func(spec string) *exec.Cmd
	// Logf, when set, is told each step.
	Logf func(format string, args ...any)
}

func (o IdleOptions) withDefaults() IdleOptions {
	if o.Conns <= 0 {
		o.Conns = 19000
	}
	if o.Low <= 0 {
		o.Low = min(2000, o.Conns/2)
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 10 * time.Second
	}
	if o.Window <= 0 {
		o.Window = 35 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 10 * time.Second
	}
	if o.PerProcess <= 0 {
		o.PerProcess = 5000
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// IdleReport is what Idle measured. Per-connection figures are slopes
// between Low and Conns connections: what one more idle connection costs.
type IdleReport struct {
	Conns, Low   int
	PingInterval time.Duration
	Window       time.Duration
	FDLimit      uint64  // the open-file limit every process ran with
	GOGC         float64 // the gateway's garbage collector target

	RSS, HeapInuse, Stacks float64 // the gateway, bytes per connection
	LiveHeap               float64 // the heap the last collection left, per connection (its goal over 1+GOGC/100)
	HeapKept               float64 // free heap not yet returned to the OS, per connection
	RuntimeOther           float64 // the runtime's own (GC metadata, spans, …), per connection
	Goroutines             float64 // the gateway's goroutines per connection
	Kernel                 float64 // bytes per connection, both sockets of it (loopback)
	NATS                   float64 // JetStream bytes stored per connection (registry record, connect event)
	RSSAtConns             float64 // the gateway's resident bytes with Conns open

	Pings       int     // pings the clients got in the window
	PingedTwice int     // connections pinged at least twice in the window
	Closed      int     // connections that ended before the report
	OnTime      float64 // share of the gateway's pings in the window written within 1 s of due; NaN when it does not say
	Late        int     // of those pings, written later than that
	CPUPer10k   float64 // share of one core the gateway used in the window, per 10,000 connections
	LockHoldMax float64 // the gateway's longest janitor lock hold since start, seconds; NaN when it does not say
	LockHold99  float64 // the 99th percentile of its holds in the window (a bucket's upper bound), seconds; NaN likewise
}

// String formats the report, with the figures extrapolated to 1,000,000
// connections.
func (r IdleReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "idle connections: %d (slopes from %d), --ping-interval %v, window %v, open-file limit %d, gateway GOGC %.0f\n", r.Conns, r.Low, r.PingInterval, r.Window, r.FDLimit, r.GOGC)
	fmt.Fprintf(&b, "per connection: RSS %.0f B, heap in use %.0f B, live heap %.0f B, stacks %.0f B, goroutines %.2f, kernel %.0f B (both sockets), NATS %.0f B\n",
		r.RSS, r.HeapInuse, r.LiveHeap, r.Stacks, r.Goroutines, r.Kernel, r.NATS)
	fmt.Fprintf(&b, "  of which free heap not yet returned to the OS %.0f B, the runtime's own %.0f B\n", r.HeapKept, r.RuntimeOther)
	fmt.Fprintf(&b, "pings: %d in the window (%.0f/s), connections pinged twice %d of %d (%.2f%%), closed %d, written within 1 s of due %.2f%% (%d later), janitor lock held at most %.3f ms (99%% of holds at most %.3f ms)\n",
		r.Pings, float64(r.Pings)/r.Window.Seconds(), r.PingedTwice, r.Conns, 100*float64(r.PingedTwice)/float64(r.Conns), r.Closed, 100*r.OnTime, r.Late, r.LockHoldMax*1e3, r.LockHold99*1e3)
	fmt.Fprintf(&b, "idle CPU: %.2f%% of a core per 10,000 connections\n", 100*r.CPUPer10k)
	base := r.RSSAtConns - r.RSS*float64(r.Conns)
	const m = 1_000_000
	fmt.Fprintf(&b, "at 1,000,000: gateway RSS %.1f GB, kernel %.1f GB, NATS %.1f GB, %.0f pings/s, idle CPU %.2f cores",
		(base+r.RSS*m)/1e9, r.Kernel*m/1e9, r.NATS*m/1e9, m/r.PingInterval.Seconds(), r.CPUPer10k*m/1e4)
	return b.String()
}

// Idle runs the wsbridge gateway binary against a NATS server embedded in
// this process, holds Low and then Conns idle WebSocket connections from
// client processes (sources spread over 127.0.0.2–127.0.0.250, so loopback's
// ephemeral ports are no limit), and measures the gateway's memory, the
// kernel's, NATS's, the ping cadence the clients see and the gateway's CPU.
func Idle(ctx context.Context, opts IdleOptions) (IdleReport, error) {
	opts = opts.withDefaults()
	rep := IdleReport{Conns: opts.Conns, Low: opts.Low, PingInterval: opts.PingInterval, Window: opts.Window}
	if opts.ClientCmd == nil {
		return rep, errors.New("idle: ClientCmd is required")
	}
	// The children inherit the limit: the gateway holds a descriptor per
	// connection.
	if err := RaiseFileLimit(uint64(opts.Conns + 512)); err != nil {
		return rep, fmt.Errorf("idle: %d connections need %d open files: %w", opts.Conns, opts.Conns+512, err)
	}
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	rep.FDLimit = uint64(lim.Cur)

	dir, err := os.MkdirTemp("", "wsbridge-idle-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	bin := opts.Binary
	if bin == "" {
		opts.Logf("building wsbridge")
		if err := buildtest.Build(dir, "."); err != nil {
			return rep, err
		}
		bin = buildtest.Binary(dir, ".")
	}

	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(dir, "nats"), NoLog: true, NoSigs: true, MaxPayload: 1 << 20})
	if err != nil {
		return rep, fmt.Errorf("idle: nats-server: %w", err)
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return rep, errors.New("idle: nats-server not ready within 10s")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return rep, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return rep, err
	}

	gw, err := startGateway(ctx, bin, ns.ClientURL(), opts)
	if err != nil {
		return rep, err
	}
	defer gw.stop()

	procs := (opts.Conns + opts.PerProcess - 1) / opts.PerProcess
	clients := make([]*clientProc, procs)
	for k := range clients {
		c, err := startClients(opts.ClientCmd(fmt.Sprintf("%s %d %d", gw.ws, k, procs)))
		if err != nil {
			return rep, err
		}
		defer c.stop()
		clients[k] = c
	}
	dial := func(target int) error {
		share := make([]int, procs)
		for i := range target {
			share[i%procs]++
		}
		var wg sync.WaitGroup
		errs := make([]error, procs)
		for k, c := range clients {
			wg.Add(1)
			go func() { defer wg.Done(); errs[k] = c.dialTo(share[k]) }()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		return waitUntil(ctx, 2*time.Minute, func() bool {
			v, err := gw.metric("wsbridge_gateway_connections")
			return err == nil && int(v) == target
		})
	}
	measure := func(n int) (gwSample, error) {
		opts.Logf("%d connections open; settling for %v", n, opts.Settle)
		select {
		case <-time.After(opts.Settle):
		case <-ctx.Done():
			return gwSample{}, ctx.Err()
		}
		return gw.sample(ctx, js)
	}

	start := time.Now()
	if err := dial(opts.Low); err != nil {
		return rep, fmt.Errorf("idle: opening %d connections: %w", opts.Low, err)
	}
	lo, err := measure(opts.Low)
	if err != nil {
		return rep, err
	}
	if err := dial(opts.Conns); err != nil {
		return rep, fmt.Errorf("idle: opening %d connections: %w", opts.Conns, err)
	}
	opts.Logf("%d connections opened in %v", opts.Conns, time.Since(start).Round(time.Millisecond))
	hi, err := measure(opts.Conns)
	if err != nil {
		return rep, err
	}
	d := float64(opts.Conns - opts.Low)
	rep.RSS = (hi.rss - lo.rss) / d
	rep.HeapInuse = (hi.heapInuse - lo.heapInuse) / d
	rep.Stacks = (hi.stacks - lo.stacks) / d
	rep.GOGC = hi.gogc
	rep.HeapKept = (hi.heapKept - lo.heapKept) / d
	rep.LiveHeap = (hi.live - lo.live) / d
	rep.RuntimeOther = (hi.other - lo.other) / d
	rep.Goroutines = (hi.goroutines - lo.goroutines) / d
	rep.Kernel = (hi.kernel - lo.kernel) / d
	rep.NATS = (hi.nats - lo.nats) / d
	rep.RSSAtConns = hi.rss

	// The ping cadence: the clients count pings from now on.
	for _, c := range clients {
		if err := c.command("mark"); err != nil {
			return rep, err
		}
	}
	before := gw.snapshot()
	opts.Logf("counting pings for %v", opts.Window)
	select {
	case <-time.After(opts.Window):
	case <-ctx.Done():
		return rep, ctx.Err()
	}
	after := gw.snapshot()
	for _, c := range clients {
		r, err := c.report()
		if err != nil {
			return rep, err
		}
		rep.Pings += r.Pings
		rep.PingedTwice += r.PingedTwice
		rep.Closed += r.Closed
	}
	rep.CPUPer10k = (after.cpu - before.cpu) / after.at.Sub(before.at).Seconds() / (float64(opts.Conns) / 1e4)
	rep.OnTime, rep.Late = math.NaN(), 0
	if n := after.pings - before.pings; n > 0 && after.hasHist {
		onTime := after.onTime - before.onTime
		rep.OnTime, rep.Late = onTime/n, int(n-onTime)
	}
	rep.LockHoldMax = after.lockHold
	rep.LockHold99 = quantile(0.99, before.holds, after.holds)
	return rep, nil
}

// gwProc is the gateway process.
type gwProc struct {
	cmd     *exec.Cmd
	ws, ops string
	out     *buildtest.SyncBuffer
	client  *http.Client
}

func startGateway(ctx context.Context, bin, natsURL string, opts IdleOptions) (*gwProc, error) {
	cmd := exec.Command(bin, "gateway", "--nats-url", natsURL, "--instance-id", "idle-load",
		"--addr", "127.0.0.1:0", "--push-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--max-connections", strconv.Itoa(opts.Conns+100), "--idle-timeout", "1h",
		"--ping-interval", opts.PingInterval.String(), "--log-level", "warn")
	g := &gwProc{cmd: cmd, out: &buildtest.SyncBuffer{}, client: &http.Client{Timeout: 10 * time.Second}}
	cmd.Stderr = g.out
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("idle: start gateway: %w", err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	deadline := time.After(30 * time.Second)
	for g.ws == "" || g.ops == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				g.stop()
				return nil, fmt.Errorf("idle: the gateway exited before its banner:\n%s", g.out.String())
			}
			f := strings.Fields(l)
			switch {
			case len(f) >= 2 && f[0] == "websocket":
				g.ws = f[1]
			case len(f) >= 3 && f[0] == "gateway" && f[1] == "ops":
				g.ops = strings.TrimSuffix(f[2], "/metrics")
			}
		case <-deadline:
			g.stop()
			return nil, fmt.Errorf("idle: the gateway printed no banner within 30s:\n%s", g.out.String())
		case <-ctx.Done():
			g.stop()
			return nil, ctx.Err()
		}
	}
	return g, nil
}

// stop kills the gateway: its drain (announcing every connection) is not
// what is measured.
func (g *gwProc) stop() {
	_ = g.cmd.Process.Kill()
	_ = g.cmd.Wait()
}

// metrics returns the gateway's /metrics samples by name (labels kept in
// the name as written).
func (g *gwProc) metrics() (map[string]float64, error) {
	resp, err := g.client.Get(g.ops + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err == nil {
			out[l[:i]] = v
		}
	}
	return out, sc.Err()
}

func (g *gwProc) metric(name string) (float64, error) {
	m, err := g.metrics()
	if err != nil {
		return 0, err
	}
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("the gateway has no metric %s", name)
	}
	return v, nil
}

type gwSample struct {
	rss, heapInuse, stacks, goroutines, kernel, nats float64
	heapKept, other, live                            float64
	gogc                                             float64
}

// sample is the median of five readings, a second apart.
func (g *gwProc) sample(ctx context.Context, js jetstream.JetStream) (gwSample, error) {
	var reads []gwSample
	for i := range 5 {
		if i > 0 {
			time.Sleep(time.Second)
		}
		m, err := g.metrics()
		if err != nil {
			return gwSample{}, err
		}
		info, err := js.AccountInfo(ctx)
		if err != nil {
			return gwSample{}, err
		}
		reads = append(reads, gwSample{
			rss:        float64(procRSS(g.cmd.Process.Pid)),
			heapInuse:  m["go_memstats_heap_inuse_bytes"],
			stacks:     m["go_memstats_stack_inuse_bytes"],
			goroutines: m["go_goroutines"],
			heapKept:   m["go_memstats_heap_idle_bytes"] - m["go_memstats_heap_released_bytes"],
			live:       liveHeap(m),
			gogc:       gogc(m),
			other: m["go_memstats_mspan_sys_bytes"] + m["go_memstats_mcache_sys_bytes"] + m["go_memstats_buck_hash_sys_bytes"] +
				m["go_memstats_gc_sys_bytes"] + m["go_memstats_other_sys_bytes"],
			kernel: kernelBytes(),
			nats:   float64(info.Store + info.Memory),
		})
	}
	med := func(f func(gwSample) float64) float64 {
		v := make([]float64, len(reads))
		for i, r := range reads {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return gwSample{
		rss:        med(func(s gwSample) float64 { return s.rss }),
		heapInuse:  med(func(s gwSample) float64 { return s.heapInuse }),
		stacks:     med(func(s gwSample) float64 { return s.stacks }),
		goroutines: med(func(s gwSample) float64 { return s.goroutines }),
		heapKept:   med(func(s gwSample) float64 { return s.heapKept }),
		other:      med(func(s gwSample) float64 { return s.other }),
		live:       med(func(s gwSample) float64 { return s.live }),
		kernel:     med(func(s gwSample) float64 { return s.kernel }),
		nats:       med(func(s gwSample) float64 { return s.nats }),
		gogc:       reads[len(reads)-1].gogc,
	}, nil
}

// liveHeap is the heap the gateway's last collection left: its goal is
// that plus GOGC% of it and of the stacks.
func liveHeap(m map[string]float64) float64 {
	f := gogc(m) / 100
	return (m["go_memstats_next_gc_bytes"] - f*m["go_memstats_stack_inuse_bytes"]) / (1 + f)
}

// gogc is the gateway's GOGC (100 when it does not say).
func gogc(m map[string]float64) float64 {
	if v, ok := m["go_gc_gogc_percent"]; ok && v > 0 {
		return v
	}
	return 100
}

type gwSnapshot struct {
	at            time.Time
	cpu           float64 // seconds of CPU used since start
	pings, onTime float64
	hasHist       bool
	lockHold      float64
	holds         map[float64]float64 // janitor_lock_hold_seconds buckets by upper bound
}

func (g *gwProc) snapshot() gwSnapshot {
	s := gwSnapshot{at: time.Now(), cpu: procCPU(g.cmd.Process.Pid), lockHold: math.NaN()}
	m, err := g.metrics()
	if err != nil {
		return s
	}
	s.pings, s.hasHist = m["wsbridge_gateway_ping_late_seconds_count"]
	s.onTime = m[`wsbridge_gateway_ping_late_seconds_bucket{le="1"}`]
	if v, ok := m["wsbridge_gateway_janitor_lock_hold_max_seconds"]; ok {
		s.lockHold = v
	}
	s.holds = map[float64]float64{}
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, `wsbridge_gateway_janitor_lock_hold_seconds_bucket{le="`); ok {
			if le, err := strconv.ParseFloat(strings.TrimSuffix(rest, `"}`), 64); err == nil {
				s.holds[le] = v
			}
		}
	}
	return s
}

// quantile is the upper bound of the histogram bucket holding the q
// quantile of what was observed between two readings (NaN without any).
func quantile(q float64, before, after map[float64]float64) float64 {
	var bounds []float64
	for le := range after {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	if len(bounds) == 0 {
		return math.NaN()
	}
	total := after[bounds[len(bounds)-1]] - before[bounds[len(bounds)-1]]
	if total <= 0 {
		return math.NaN()
	}
	for _, le := range bounds {
		if after[le]-before[le] >= q*total {
			return le
		}
	}
	return math.Inf(1)
}

// procRSS is a process's resident set size in bytes (0 when unknown).
func procRSS(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// procCPU is the user and system CPU seconds a process used (Linux's
// clock ticks are 1/100 s).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// socketSlabs are the kernel caches a TCP socket takes objects from: the
// socket, its inode, its file, its dentry, its epoll entry.
var socketSlabs = []string{"TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi"}

// kernelBytes is what sockets cost the kernel: the objects of socketSlabs
// (/proc/slabinfo, readable by root), or else all of its slab memory,
// plus the pages of TCP buffers.
func kernelBytes() float64 {
	var total float64
	if b, err := os.ReadFile("/proc/slabinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) > 3 && slices.Contains(socketSlabs, f[0]) {
				objs, _ := strconv.ParseFloat(f[2], 64)
				size, _ := strconv.ParseFloat(f[3], 64)
				total += objs * size
			}
		}
	} else if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "Slab:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				total += kb * 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) > 0 && f[0] == "TCP:" {
				for i := 1; i+1 < len(f); i += 2 {
					if f[i] == "mem" {
						pages, _ := strconv.ParseFloat(f[i+1], 64)
						total += pages * float64(os.Getpagesize())
					}
				}
			}
		}
	}
	return total
}

// clientProc is one client process.
type clientProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines *bufio.Reader
	have  int
}

func startClients(cmd *exec.Cmd) (*clientProc, error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("idle: start clients: %w", err)
	}
	return &clientProc{cmd: cmd, in: in, lines: bufio.NewReader(out)}, nil
}

func (c *clientProc) stop() {
	_ = c.in.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// command sends one command and returns the answer line, which must not
// start with "error".
func (c *clientProc) command(cmd string) error {
	_, err := c.ask(cmd)
	return err
}

func (c *clientProc) ask(cmd string) (string, error) {
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		return "", fmt.Errorf("idle clients: %s: %w", cmd, err)
	}
	for {
		line, err := c.lines.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("idle clients: %s: no answer: %w", cmd, err)
		}
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "error "); ok {
			return "", fmt.Errorf("idle clients: %s: %s", cmd, rest)
		}
		if rest, ok := strings.CutPrefix(line, "ok"); ok {
			return strings.TrimSpace(rest), nil
		}
		// Anything else is the test framework's chatter.
	}
}

func (c *clientProc) dialTo(n int) error {
	if n <= c.have {
		return nil
	}
	if err := c.command(fmt.Sprintf("dial %d", n-c.have)); err != nil {
		return err
	}
	c.have = n
	return nil
}

type clientReport struct {
	Pings, PingedTwice, Closed int
}

func (c *clientProc) report() (clientReport, error) {
	var r clientReport
	s, err := c.ask("report")
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal([]byte(s), &r)
}

// RunIdleClients is the client side of Idle, in its own process: spec is
// "wsURL k procs" (this process's index among procs). It answers commands
// on in, one a line, with a line on out starting "ok" or "error":
// "dial N" opens N more connections, each read by a goroutine (so answering
// pings, counted as they come), from source addresses 127.0.0.2–127.0.0.250;
// "mark" starts counting pings afresh; "report" answers the counts since the
// mark as JSON. It returns when in ends, closing every connection.
func RunIdleClients(ctx context.Context, spec string, in io.Reader, out io.Writer) error {
	f := strings.Fields(spec)
	if len(f) != 3 {
		return fmt.Errorf("idle clients: spec %q: want \"wsURL k procs\"", spec)
	}
	k, err1 := strconv.Atoi(f[1])
	procs, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || procs <= 0 {
		return fmt.Errorf("idle clients: spec %q: want \"wsURL k procs\"", spec)
	}
	const firstIP, ips = 2, 249
	transports := make([]*http.Transport, ips)
	for i := range transports {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(firstIP+i))}, Timeout: 30 * time.Second}
		transports[i] = &http.Transport{DialContext: d.DialContext}
	}
	type client struct {
		c      *websocket.Conn
		pings  atomic.Int32
		closed atomic.Bool
	}
	var all []*client
	defer func() {
		for _, c := range all {
			_ = c.c.CloseNow()
		}
	}()
	next := k // the source address of the next connection
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		cmd := strings.Fields(lines.Text())
		if len(cmd) == 0 {
			continue
		}
		switch cmd[0] {
		case "dial":
			n, err := strconv.Atoi(cmd[1])
			if err != nil {
				fmt.Fprintf(out, "error dial: %v\n", err)
				continue
			}
			fresh := make([]*client, n)
			var failed atomic.Value
			var idx atomic.Int64
			var wg sync.WaitGroup
			for range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(idx.Add(1)) - 1
						if i >= n || failed.Load() != nil {
							return
						}
						cl := &client{}
						tr := transports[(next+i*procs)%ips]
						dctx, cancel := context.WithTimeout(ctx, time.Minute)
						c, _, err := websocket.Dial(dctx, f[0], &websocket.DialOptions{
							HTTPClient:     &http.Client{Transport: tr},
							OnPingReceived: func(context.Context, []byte) bool { cl.pings.Add(1); return true },
						})
						cancel()
						if err != nil {
							failed.Store(err)
							return
						}
						cl.c = c
						fresh[i] = cl
						go func() {
							_, _, _ = c.Read(context.Background()) // answers pings; no frames come
							cl.closed.Store(true)
						}()
					}
				}()
			}
			wg.Wait()
			for _, c := range fresh {
				if c != nil {
					all = append(all, c)
				}
			}
			next += n * procs
			if err, _ := failed.Load().(error); err != nil {
				fmt.Fprintf(out, "error dial: %v\n", err)
				continue
			}
			fmt.Fprintln(out, "ok")
		case "mark":
			for _, c := range all {
				c.pings.Store(0)
			}
			fmt.Fprintln(out, "ok")
		case "report":
			var r clientReport
			for _, c := range all {
				p := int(c.pings.Load())
				r.Pings += p
				if p >= 2 {
					r.PingedTwice++
				}
				if c.closed.Load() {
					r.Closed++
				}
			}
			b, _ := json.Marshal(r)
			fmt.Fprintf(out, "ok %s\n", b)
		default:
			fmt.Fprintf(out, "error unknown command %q\n", cmd[0])
		}
	}
	return lines.Err()
}
