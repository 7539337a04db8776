// Package load is the load generator of the gateway benchmarks: it holds many
// WebSocket connections against a gateway and measures memory per
// connection and round-trip latency. It is test tooling, not product code.
package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/subjects"
)

// LoadOptions configure Load; zero fields take the defaults shown.
type LoadOptions struct {
	Conns       int           // connections held at once, 1000
	Rate        int           // round trips started per second, over all connections, 1000
	Duration    time.Duration // how long to send at Rate, 3s
	MessageSize int           // bytes per message, 64 (at least 24)
	Dialers     int           // dials in parallel, 64
	// PushOnly measures push-to-client latency instead of round trips:
	// Rate pushes a second are POSTed to the reverse-push address, round
	// robin over the connections, and the clients only receive.
	PushOnly bool
	// Baseline serves the same clients with a bare coder/websocket server
	// (see baseline) instead of the gateway, as the yardstick.
	Baseline bool

	// ClientCmd, when set, returns the command that runs the clients in
	// another process against wsURL; it must call RunLoadClients with its
	// stdin and stdout.
	ClientCmd func(wsURL string) *exec.Cmd
}

// LoadReport is what Load measured. Memory is the emulator's alone when
// ServerOnly, else both ends together (clients and emulator in one process).
type LoadReport struct {
	Conns       int           // connections held at once
	ServerOnly  bool          // memory figures exclude the clients
	ConnectTime time.Duration // to open all of them
	PushOnly    bool          // latencies are push to client, not round trips
	HeapPerConn float64       // Go heap in use per connection, bytes
	RSSPerConn  float64       // resident memory per connection, bytes (0 where unknown)
	Goroutines  int           // goroutines while every connection is open
	Sent        int           // round trips started
	Received    int           // round trips completed
	P50, P99    time.Duration // round-trip latency percentiles
	Max         time.Duration
}

// String formats the report on one line.
func (r LoadReport) String() string {
	what := "round-trips"
	if r.PushOnly {
		what = "pushes"
	}
	return fmt.Sprintf("conns=%d server-only=%v connect=%v (%.0f/s) heap/conn=%.0fB rss/conn=%.0fB goroutines=%d %s=%d/%d p50=%v p99=%v max=%v",
		r.Conns, r.ServerOnly, r.ConnectTime.Round(time.Millisecond), float64(r.Conns)/r.ConnectTime.Seconds(),
		r.HeapPerConn, r.RSSPerConn, r.Goroutines, what, r.Received, r.Sent, r.P50, r.P99, r.Max)
}

func (o LoadOptions) withDefaults() LoadOptions {
	if o.Conns <= 0 {
		o.Conns = 1000
	}
	if o.Rate <= 0 {
		o.Rate = 1000
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.MessageSize <= 0 {
		o.MessageSize = 64
	}
	o.MessageSize = max(o.MessageSize, 24) // room for the timestamp
	if o.Dialers <= 0 {
		o.Dialers = 64
	}
	return o
}

// Load measures the emulator under connections: it serves an emulator on
// 127.0.0.1 with an in-process function that accepts every connection and
// whose transfer role pushes each frame straight back through the
// reverse-push address, opens opts.Conns WebSocket clients, measures memory
// per connection, then starts opts.Rate round trips a second (client frame
// → transfer → POST /push → client) for opts.Duration and reports their
// latency.
//
// The clients run in this process unless opts.ClientCmd is set; then they
// run in that command (which calls RunLoadClients), memory figures are the
// emulator's alone, and each process needs only one descriptor per
// connection. Loopback has about 28,000 ephemeral ports, so keep Conns well
// below that. Load raises the open-file limit when it can.
func Load(ctx context.Context, opts LoadOptions) (LoadReport, error) {
	opts = opts.withDefaults()
	need := uint64(opts.Conns + 2048)
	if opts.ClientCmd == nil {
		need += uint64(opts.Conns)
	}
	if err := RaiseFileLimit(need); err != nil {
		return LoadReport{}, fmt.Errorf("load: %d connections need %d open files (set ClientCmd to split them over two processes): %w", opts.Conns, need, err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return LoadReport{}, fmt.Errorf("load: %w", err)
	}
	base := "http://" + ln.Addr().String()
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	var open func() int64
	var ids func() []string
	if opts.Baseline {
		b := newBaseline()
		open, ids = b.open.Load, b.ids
		go func() { served <- b.serve(sctx, ln) }()
	} else {
		fn := newEchoFunction(base + gateway.DefaultPushPath)
		defer fn.client.CloseIdleConnections()
		g, err := gateway.New(gateway.Options{
			Register: fn, Transfer: fn, Cleanup: fn,
			MaxConnections:  opts.Conns + 16,
			MaxMessageSize:  int64(opts.MessageSize) + 1024,
			IdleTimeout:     time.Hour,
			FunctionTimeout: 30 * time.Second,
			ShutdownTimeout: 30 * time.Second,
		})
		if err != nil {
			ln.Close()
			stop()
			return LoadReport{}, err
		}
		open = func() int64 { return g.Stats().ConnectionsOpen }
		ids = g.ConnectionIDs
		go func() { served <- g.Serve(sctx, ln) }()
	}
	defer func() { stop(); <-served }()

	wsURL := "ws" + strings.TrimPrefix(base, "http") + gateway.DefaultWSPath
	before := memory()
	rep := LoadReport{Conns: opts.Conns, ServerOnly: opts.ClientCmd != nil, PushOnly: opts.PushOnly}
	// ready runs once every client is connected, before the round trips.
	ready := func() error {
		if err := waitUntil(ctx, 30*time.Second, func() bool { return open() == int64(opts.Conns) }); err != nil {
			return fmt.Errorf("%d of %d connections open: %w", open(), opts.Conns, err)
		}
		after := memory()
		rep.HeapPerConn = float64(int64(after.heap)-int64(before.heap)) / float64(opts.Conns)
		if before.rss > 0 && after.rss > 0 {
			rep.RSSPerConn = float64(int64(after.rss)-int64(before.rss)) / float64(opts.Conns)
		}
		rep.Goroutines = runtime.NumGoroutine()
		return nil
	}

	// pushes runs the pushes of PushOnly and returns how many were made.
	pushes := func() (int, error) { return pushAll(ctx, base+gateway.DefaultPushPath, ids(), opts) }

	var res ClientResult
	if opts.ClientCmd == nil {
		res, err = runClients(ctx, wsURL, opts, ready, pushes)
	} else {
		res, err = runClientCmd(ctx, opts.ClientCmd(wsURL), opts.PushOnly, ready, pushes)
	}
	rep.ConnectTime, rep.Sent, rep.Received = res.ConnectTime, res.Sent, res.Received
	rep.P50, rep.P99, rep.Max = res.P50, res.P99, res.Max
	if err != nil {
		return rep, fmt.Errorf("load: %w", err)
	}
	return rep, nil
}

// ClientResult is what the client half of Load measured.
type ClientResult struct {
	ConnectTime   time.Duration
	Sent          int
	Received      int
	P50, P99, Max time.Duration
}

// RunLoadClients is the client half of Load, for a separate process (see
// LoadOptions.ClientCmd): it opens opts.Conns connections to wsURL, writes
// "ready" and a newline to out, waits for a line on in, runs the round trips
// and writes its ClientResult as one line of JSON to out.
func RunLoadClients(ctx context.Context, wsURL string, opts LoadOptions, in io.Reader, out io.Writer) error {
	opts = opts.withDefaults()
	if err := RaiseFileLimit(uint64(opts.Conns + 1024)); err != nil {
		return fmt.Errorf("load clients: %w", err)
	}
	lines := bufio.NewReader(in)
	res, err := runClients(ctx, wsURL, opts, func() error {
		if _, err := io.WriteString(out, "ready\n"); err != nil {
			return err
		}
		_, err := lines.ReadString('\n')
		return err
	}, func() (int, error) {
		line, err := lines.ReadString('\n')
		if err != nil {
			return 0, err
		}
		var n int
		if _, err := fmt.Sscanf(line, "pushed %d", &n); err != nil {
			return 0, fmt.Errorf("load clients: want \"pushed N\", got %q", line)
		}
		return n, nil
	})
	if err != nil {
		return fmt.Errorf("load clients: %w", err)
	}
	return json.NewEncoder(out).Encode(res)
}

func runClientCmd(ctx context.Context, cmd *exec.Cmd, pushOnly bool, ready func() error, pushes func() (int, error)) (ClientResult, error) {
	var res ClientResult
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start load clients: %w", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	defer stop()
	lines := bufio.NewReader(stdout)
	for {
		line, err := lines.ReadString('\n')
		if err != nil {
			return res, fmt.Errorf("load clients ended before connecting: %w", err)
		}
		if strings.TrimSpace(line) == "ready" {
			break
		}
	}
	if err := ready(); err != nil {
		return res, err
	}
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		return res, err
	}
	if pushOnly {
		n, err := pushes()
		if err != nil {
			return res, err
		}
		if _, err := fmt.Fprintf(stdin, "pushed %d\n", n); err != nil {
			return res, err
		}
	}
	for {
		line, err := lines.ReadString('\n')
		if err != nil {
			return res, fmt.Errorf("load clients ended without a result: %w", err)
		}
		if json.Unmarshal([]byte(line), &res) == nil && res.Sent > 0 {
			return res, nil
		}
	}
}

// runClients dials opts.Conns clients, calls ready, then starts opts.Rate
// round trips a second, round robin over the clients, for opts.Duration;
// with PushOnly it calls pushes instead and waits for what it pushed.
// Frames carry the wall-clock time they were sent at (clients and pushes
// may run in two processes on one machine).
func runClients(ctx context.Context, wsURL string, opts LoadOptions, ready func() error, pushes func() (int, error)) (ClientResult, error) {
	var res ClientResult
	var mu sync.Mutex
	var lat []time.Duration
	var received atomic.Int64

	clients := make([]*websocket.Conn, opts.Conns)
	defer func() {
		for _, c := range clients {
			if c != nil {
				_ = c.CloseNow()
			}
		}
	}()
	var dialErr error
	var dialMu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range opts.Dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= opts.Conns {
					return
				}
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				c, _, err := websocket.Dial(dctx, wsURL, nil)
				cancel()
				if err != nil {
					dialMu.Lock()
					dialErr = errors.Join(dialErr, fmt.Errorf("dial %d: %w", i, err))
					dialMu.Unlock()
					next.Store(int64(opts.Conns)) // stop the others
					return
				}
				clients[i] = c
				go func() { // one round trip completes per echo
					for {
						_, data, err := c.Read(context.Background())
						if err != nil {
							return
						}
						stamp, _, _ := bytes.Cut(data, []byte{' '})
						sent, err := strconv.ParseInt(string(stamp), 10, 64)
						if err != nil {
							continue
						}
						d := time.Duration(time.Now().UnixNano() - sent)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
						received.Add(1)
					}
				}()
			}
		}()
	}
	wg.Wait()
	if dialErr != nil {
		return res, dialErr
	}
	res.ConnectTime = time.Since(start)
	mu.Lock()
	lat = make([]time.Duration, 0, int(float64(opts.Rate)*opts.Duration.Seconds())+16)
	mu.Unlock()
	if err := ready(); err != nil {
		return res, err
	}

	if opts.PushOnly {
		n, err := pushes()
		if err != nil {
			return res, err
		}
		res.Sent = n
		return finishClients(ctx, res, &received, &mu, &lat)
	}
	pad := strings.Repeat("x", opts.MessageSize)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	sendStart := time.Now()
	for k := 0; ; {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-tick.C:
		}
		elapsed := time.Since(sendStart)
		if elapsed >= opts.Duration {
			break
		}
		due := int(elapsed.Seconds() * float64(opts.Rate))
		for ; res.Sent < due; k++ {
			msg := strconv.FormatInt(time.Now().UnixNano(), 10) + " "
			msg += pad[:opts.MessageSize-len(msg)]
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := clients[k%len(clients)].Write(wctx, websocket.MessageText, []byte(msg))
			cancel()
			if err != nil {
				return res, fmt.Errorf("send: %w", err)
			}
			res.Sent++
		}
	}
	return finishClients(ctx, res, &received, &mu, &lat)
}

// finishClients waits for every frame sent (at most 10s) and computes the
// latency percentiles.
func finishClients(ctx context.Context, res ClientResult, received *atomic.Int64, mu *sync.Mutex, lat *[]time.Duration) (ClientResult, error) {
	_ = waitUntil(ctx, 10*time.Second, func() bool { return received.Load() >= int64(res.Sent) })
	res.Received = int(received.Load())

	mu.Lock()
	slices.Sort(*lat)
	if n := len(*lat); n > 0 {
		l := *lat
		res.P50, res.P99, res.Max = l[n*50/100], l[min(n*99/100, n-1)], l[n-1]
	}
	mu.Unlock()
	if res.Received < res.Sent {
		return res, fmt.Errorf("%d of %d frames arrived", res.Received, res.Sent)
	}
	return res, nil
}

// pushAll POSTs opts.Rate pushes a second for opts.Duration to pushURL,
// round robin over ids, each carrying the wall-clock time it was sent at,
// from 32 workers; it returns how many were answered 200.
func pushAll(ctx context.Context, pushURL string, ids []string, opts LoadOptions) (int, error) {
	if len(ids) == 0 {
		return 0, errors.New("no connections to push to")
	}
	const workers = 32
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	pad := strings.Repeat("x", opts.MessageSize)
	jobs := make(chan string, opts.Rate)
	var ok atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range jobs {
				msg := strconv.FormatInt(time.Now().UnixNano(), 10) + " "
				msg += pad[:max(opts.MessageSize-len(msg), 0)]
				body, _ := json.Marshal(subjects.PushBody{WebSocket: subjects.GatewayWebSocket{
					Action: subjects.ActionDataSend, SecConnectionID: id, DataType: subjects.DataText, Data: msg}})
				resp, err := client.Post(pushURL, "application/json", bytes.NewReader(body))
				if err != nil {
					failed.Store(err)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok.Add(1)
				} else {
					failed.Store(fmt.Errorf("push answered %s", resp.Status))
				}
			}
		}()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start, sent := time.Now(), 0
	for {
		elapsed := time.Since(start)
		if elapsed >= opts.Duration || ctx.Err() != nil {
			break
		}
		for due := int(elapsed.Seconds() * float64(opts.Rate)); sent < due; sent++ {
			jobs <- ids[sent%len(ids)]
		}
		<-tick.C
	}
	close(jobs)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return int(ok.Load()), fmt.Errorf("pushes: %d of %d answered 200; last failure: %w", ok.Load(), sent, err)
	}
	return int(ok.Load()), nil
}

func waitUntil(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %v", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// echoFunction is the load test's in-process function: it accepts every
// connection and pushes every frame back to its sender through the
// reverse-push address, as a business service answering at once would.
type echoFunction struct {
	push   string
	client *http.Client
}

func newEchoFunction(pushURL string) *echoFunction {
	return &echoFunction{push: pushURL, client: &http.Client{
		Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute},
		Timeout:   10 * time.Second,
	}}
}

var acceptReply = []byte(`{"errNo":0,"errMsg":"ok"}`)

// Invoke implements gateway.Invoker.
func (f *echoFunction) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	var ev subjects.GatewayEvent
	if err := json.Unmarshal(payload, &ev); err != nil || ev.WebSocket == nil {
		return nil, fmt.Errorf("echo function: bad event: %v", err)
	}
	if ev.WebSocket.Action != subjects.ActionDataRecv {
		return acceptReply, nil
	}
	body, err := json.Marshal(subjects.PushBody{WebSocket: subjects.GatewayWebSocket{
		Action: subjects.ActionDataSend, SecConnectionID: ev.WebSocket.SecConnectionID,
		DataType: ev.WebSocket.DataType, Data: ev.WebSocket.Data,
	}})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.push, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("echo function: push: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("echo function: push answered %s", resp.Status)
	}
	return acceptReply, nil
}

type memStats struct{ heap, rss uint64 }

// memory returns the live heap after a full collection and the resident
// set size (Linux only; 0 elsewhere), with freed memory given back to the
// OS first, so an earlier run in the process does not count.
func memory() memStats {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memStats{heap: ms.HeapInuse, rss: readRSS()}
}

func readRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// LoadOptionsFromEnv overrides base with the WSBRIDGE_BENCH_CONNS,
// WSBRIDGE_BENCH_RATE and WSBRIDGE_BENCH_DURATION variables the load
// benchmarks document, when set.
func LoadOptionsFromEnv(base LoadOptions, getenv func(string) string) (LoadOptions, error) {
	positive := func(name string, set func(string) error) error {
		v := getenv(name)
		if v == "" {
			return nil
		}
		if err := set(v); err != nil {
			return fmt.Errorf("%s=%q: %w", name, v, err)
		}
		return nil
	}
	atoi := func(dst *int) func(string) error {
		return func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return errors.New("want a positive integer")
			}
			*dst = n
			return nil
		}
	}
	err := errors.Join(
		positive("WSBRIDGE_BENCH_CONNS", atoi(&base.Conns)),
		positive("WSBRIDGE_BENCH_RATE", atoi(&base.Rate)),
		positive("WSBRIDGE_BENCH_DURATION", func(v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return errors.New("want a positive duration")
			}
			base.Duration = d
			return nil
		}),
	)
	return base, err
}
