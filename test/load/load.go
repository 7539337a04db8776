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
	return fmt.Sprintf("conns=%d server-only=%v connect=%v heap/conn=%.0fB rss/conn=%.0fB goroutines=%d round-trips=%d/%d p50=%v p99=%v max=%v",
		r.Conns, r.ServerOnly, r.ConnectTime.Round(time.Millisecond), r.HeapPerConn, r.RSSPerConn, r.Goroutines,
		r.Received, r.Sent, r.P50, r.P99, r.Max)
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
		return LoadReport{}, err
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- g.Serve(sctx, ln) }()
	defer func() { stop(); <-served }()

	wsURL := "ws" + strings.TrimPrefix(base, "http") + gateway.DefaultWSPath
	before := memory()
	rep := LoadReport{Conns: opts.Conns, ServerOnly: opts.ClientCmd != nil}
	// ready runs once every client is connected, before the round trips.
	ready := func() error {
		if err := waitUntil(ctx, 30*time.Second, func() bool { return g.Stats().ConnectionsOpen == int64(opts.Conns) }); err != nil {
			return fmt.Errorf("%d of %d connections open: %w", g.Stats().ConnectionsOpen, opts.Conns, err)
		}
		after := memory()
		rep.HeapPerConn = float64(int64(after.heap)-int64(before.heap)) / float64(opts.Conns)
		if before.rss > 0 && after.rss > 0 {
			rep.RSSPerConn = float64(int64(after.rss)-int64(before.rss)) / float64(opts.Conns)
		}
		rep.Goroutines = runtime.NumGoroutine()
		return nil
	}

	var res ClientResult
	if opts.ClientCmd == nil {
		res, err = runClients(ctx, wsURL, opts, ready)
	} else {
		res, err = runClientCmd(ctx, opts.ClientCmd(wsURL), ready)
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
	res, err := runClients(ctx, wsURL, opts, func() error {
		if _, err := io.WriteString(out, "ready\n"); err != nil {
			return err
		}
		_, err := bufio.NewReader(in).ReadString('\n')
		return err
	})
	if err != nil {
		return fmt.Errorf("load clients: %w", err)
	}
	return json.NewEncoder(out).Encode(res)
}

func runClientCmd(ctx context.Context, cmd *exec.Cmd, ready func() error) (ClientResult, error) {
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
// round trips a second, round robin over the clients, for opts.Duration.
func runClients(ctx context.Context, wsURL string, opts LoadOptions, ready func() error) (ClientResult, error) {
	var res ClientResult
	epoch := time.Now()
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
						d := time.Since(epoch) - time.Duration(sent)
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
			msg := strconv.FormatInt(int64(time.Since(epoch)), 10) + " "
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
	_ = waitUntil(ctx, 10*time.Second, func() bool { return received.Load() >= int64(res.Sent) })
	res.Received = int(received.Load())

	mu.Lock()
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		res.P50, res.P99, res.Max = lat[n*50/100], lat[min(n*99/100, n-1)], lat[n-1]
	}
	mu.Unlock()
	if res.Received < res.Sent {
		return res, fmt.Errorf("%d of %d round trips completed", res.Received, res.Sent)
	}
	return res, nil
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
// set size (Linux only; 0 elsewhere).
func memory() memStats {
	runtime.GC()
	runtime.GC()
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
