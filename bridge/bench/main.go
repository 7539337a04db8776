// Command bench measures the bridge on this machine: drain rate against a
// plain Go HTTP client posting the same bodies, the seed's naive pattern,
// publish-to-post latency at a fixed offered rate, and the memory of a
// bridge indexing a large registry.
//
//	go run ./bridge/bench [-n 100000] [-conns 1000] [-concurrency 64] [-rate 2000] [-duration 5s] [-registry 100000]
//	go run ./bridge/bench -scale [-latency 2ms] [-scale-n 20000] [-scale-concurrency 8] [-runs 3] [-kills 5]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/subjects"
)

var cpuProfile, plainProfile, memProfile, heapProfile string

// partitions is the outbound partition count of every bridge the bench runs.
var partitions int

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child-bridge" {
		os.Exit(childBridge(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "child-scale-bridge" {
		os.Exit(childScaleBridge(os.Args[2:]))
	}
	n := flag.Int("n", 100000, "messages to drain")
	conns := flag.Int("conns", 1000, "connections the messages are spread over")
	conc := flag.Int("concurrency", 64, "pushes in flight (bridge) and posting goroutines (plain client)")
	naiveN := flag.Int("naive-n", 3000, "posts of the naive baseline (sequential, no keep-alive)")
	offered := flag.Float64("rate", 2000, "offered rate of the latency run, messages per second")
	dur := flag.Duration("duration", 5*time.Second, "length of the latency run")
	registry := flag.Int("registry", 100000, "registry size of the memory run (0 skips it)")
	flag.IntVar(&partitions, "partitions", subjects.DefaultPartitions, "outbound partitions")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the bridge drain to this file")
	flag.StringVar(&plainProfile, "plaincpuprofile", "", "write a CPU profile of the plain client run to this file")
	flag.StringVar(&heapProfile, "heapprofile", "", "write a heap profile of the memory run's bridge process to this file")
	flag.StringVar(&memProfile, "memprofile", "", "write an allocation profile of the bridge drain to this file")
	logCost := flag.Bool("logcost", false, "measure instead what reading the log costs the server and each bridge with 1, 3 and 8 bridge processes")
	scale := flag.Bool("scale", false, "measure scale-out instead: drain rate of 1, 2 and 3 bridges at -latency, then failover over -kills")
	latency := flag.Duration("latency", 2*time.Millisecond, "gateway latency of the -scale runs")
	scaleN := flag.Int("scale-n", 20000, "messages each -scale drain run")
	scaleConc := flag.Int("scale-concurrency", 8, "pushes in flight per bridge in the -scale runs")
	runs := flag.Int("runs", 3, "repetitions of the -scale drain runs")
	kills := flag.Int("kills", 5, "bridge processes SIGKILLed (and as many SIGTERMed) in -scale; 0 skips it")
	flag.Parse()
	if *logCost {
		if err := runLogCost(*n, *conns); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *scale {
		if err := runScale(*scaleN, *conns, *scaleConc, *runs, *kills, *latency); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*n, *conns, *conc, *naiveN, *offered, *dur, *registry); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// benchNATS starts the embedded NATS server with its storage in a new
// temporary directory named after pattern, connects and provisions the
// streams with -partitions; done undoes all of it.
// stallWait bounds a publish's wait for room among the acks outstanding:
// on a loaded machine the default 200 ms ends a preload with an error.
var stallWait = jetstream.WithStallWait(time.Minute)

func benchNATS(pattern string) (s *server.Server, nc *nats.Conn, js jetstream.JetStream, done func(), err error) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if s, err = bridge.StartEmbeddedNATS(bridge.EmbeddedOptions{Host: "127.0.0.1", Port: -1, StoreDir: dir}); err == nil {
		if nc, err = nats.Connect(s.ClientURL()); err == nil {
			if js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096)); err == nil {
				if err = subjects.Provision(context.Background(), js, subjects.MustNew(""), subjects.StreamOptions{Partitions: partitions}); err == nil {
					return s, nc, js, func() { nc.Close(); s.Shutdown(); _ = os.RemoveAll(dir) }, nil
				}
			}
			nc.Close()
		}
		s.Shutdown()
	}
	_ = os.RemoveAll(dir)
	return nil, nil, nil, nil, err
}

// target is the loopback reverse-push address: it answers like the gateway
// and records, for bodies carrying a timestamp, publish-to-post latency.
type target struct {
	count atomic.Int64
	mu    sync.Mutex
	lat   []time.Duration
}

func (tg *target) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body subjects.PushBody
	data, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(data, &body); err == nil {
		if ts, ok := strings.CutPrefix(body.WebSocket.Data, "t="); ok {
			if ns, err := strconv.ParseInt(ts[:strings.IndexByte(ts+" ", ' ')], 10, 64); err == nil {
				d := time.Since(time.Unix(0, ns))
				tg.mu.Lock()
				tg.lat = append(tg.lat, d)
				tg.mu.Unlock()
			}
		}
	}
	tg.count.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"errNo":0,"errMsg":"ok"}`))
}

func waitCount(tg *target, want int64, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for tg.count.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d posts after %v", tg.count.Load(), want, bound)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

func run(n, conns, conc, naiveN int, offered float64, dur time.Duration, registry int) error {
	s, nc, js, done, err := benchNATS("wsbridge-bench-")
	if err != nil {
		return err
	}
	defer done()
	names := subjects.MustNew("")
	ctx := context.Background()
	tg := &target{}
	srv := httptest.NewServer(tg)
	defer srv.Close()
	fmt.Printf("wsbridge bench: GOMAXPROCS=%d, %d messages over %d connections, concurrency %d\n", runtime.GOMAXPROCS(0), n, conns, conc)

	payload := strings.Repeat("x", 64)
	tokens := make([]string, conns)
	for i := range tokens {
		tokens[i] = subjects.Token(fmt.Sprintf("bench-conn-%06d==", i))
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := js.PublishAsync(names.Send(tokens[i%conns]), []byte(payload), stallWait); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	fmt.Printf("preload:   %d messages stored in %v\n", n, time.Since(start).Round(time.Millisecond))

	// 1. The bridge drains the preloaded messages.
	opts := bridge.Options{PushURL: srv.URL + "/api-bench", Concurrency: conc, ShutdownTimeout: 5 * time.Second, Partitions: partitions}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bridge.New(opts, bridge.Deps{Conn: nc, Logger: quiet})
	if err != nil {
		return err
	}
	stopCPU, err := startCPUProfile(cpuProfile)
	if err != nil {
		return err
	}
	if memProfile != "" {
		runtime.GC()
		runtime.MemProfileRate = 64 << 10
	}
	cpu0 := cpuTime()
	start = time.Now()
	if err := b.Start(ctx); err != nil {
		return err
	}
	startTook := time.Since(start)
	if err := waitCount(tg, int64(n), 10*time.Minute); err != nil {
		return err
	}
	bridgeTook := time.Since(start)
	bridgeCPU := cpuTime() - cpu0
	stopCPU()
	if memProfile != "" {
		if err := writeProfile("allocs", memProfile); err != nil {
			return err
		}
	}
	_ = b.Stop(ctx)
	bridgeRate := float64(n) / bridgeTook.Seconds()
	fmt.Printf("bridge:    %8.0f msg/s  (%d pushes in %v, of which Start %v; process CPU %.0f µs/msg, %.0f%% of a CPU)\n",
		bridgeRate, n, bridgeTook.Round(time.Millisecond), startTook.Round(time.Millisecond),
		float64(bridgeCPU.Microseconds())/float64(n), 100*bridgeCPU.Seconds()/bridgeTook.Seconds())

	// 2. A plain keep-alive client posting the same bodies, same concurrency.
	bodies := make([][]byte, n)
	for i := range bodies {
		id, _ := subjects.ConnID(tokens[i%conns])
		bodies[i], _ = json.Marshal(subjects.PushBody{WebSocket: subjects.GatewayWebSocket{
			Action: subjects.ActionDataSend, SecConnectionID: id, DataType: subjects.DataText, Data: payload}})
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: conc, MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}, Timeout: 10 * time.Second}
	tg.count.Store(0)
	var next atomic.Int64
	var wg sync.WaitGroup
	stopPlainCPU, err := startCPUProfile(plainProfile)
	if err != nil {
		return err
	}
	cpu0 = cpuTime()
	start = time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				post(client, srv.URL+"/api-bench", bodies[i])
			}
		}()
	}
	wg.Wait()
	plainTook := time.Since(start)
	plainCPU := cpuTime() - cpu0
	stopPlainCPU()
	plainRate := float64(n) / plainTook.Seconds()
	fmt.Printf("plain:     %8.0f msg/s  (%d posts in %v; process CPU %.0f µs/msg, %.0f%% of a CPU)\n", plainRate, n, plainTook.Round(time.Millisecond),
		float64(plainCPU.Microseconds())/float64(n), 100*plainCPU.Seconds()/plainTook.Seconds())
	fmt.Printf("ratio:     bridge/plain = %.2f\n", bridgeRate/plainRate)

	// 3. The seed's pattern: one blocking post per message, a new
	// connection each time, sequential.
	naive := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	start = time.Now()
	for i := 0; i < naiveN && i < n; i++ {
		post(naive, srv.URL+"/api-bench", bodies[i])
	}
	naiveTook := time.Since(start)
	naiveRate := float64(min(naiveN, n)) / naiveTook.Seconds()
	fmt.Printf("naive:     %8.0f msg/s  (%d sequential posts without keep-alive in %v); bridge is %.0fx\n",
		naiveRate, min(naiveN, n), naiveTook.Round(time.Millisecond), bridgeRate/naiveRate)

	// 4. Latency at a fixed offered rate.
	b, err = bridge.New(opts, bridge.Deps{Conn: nc, Logger: quiet})
	if err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	tg.count.Store(0)
	total := int(offered * dur.Seconds())
	interval := time.Duration(float64(time.Second) / offered)
	start = time.Now()
	for i := 0; i < total; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		data := "t=" + strconv.FormatInt(time.Now().UnixNano(), 10) + " " + payload
		if _, err := js.PublishAsync(names.Send(tokens[i%conns]), []byte(data), stallWait); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	if err := waitCount(tg, int64(total), time.Minute); err != nil {
		return err
	}
	_ = b.Stop(ctx)
	tg.mu.Lock()
	lat := slices.Clone(tg.lat)
	tg.mu.Unlock()
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)] }
	fmt.Printf("latency:   %d msg at %.0f msg/s: p50 %v, p99 %v, max %v (publish -> post received)\n",
		len(lat), offered, pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))

	// 5. Memory of a bridge process indexing the registry.
	if registry > 0 {
		if err := registerMany(ctx, js, names, registry); err != nil {
			return err
		}
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cmd := exec.Command(exe, "child-bridge", s.ClientURL(), srv.URL+"/api-bench", strconv.Itoa(registry))
		if heapProfile != "" {
			cmd.Env = append(os.Environ(), "WSBRIDGE_BENCH_HEAPPROFILE="+heapProfile)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("child bridge: %v\n%s", err, out)
		}
		fmt.Printf("memory:    %s", out)
	}
	return nil
}

// cpuTime is the CPU time (user and system) this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func writeProfile(name, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup(name).WriteTo(f, 0)
}

func post(c *http.Client, url string, body []byte) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, "post:", err)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func registerMany(ctx context.Context, js jetstream.JetStream, names subjects.Names, n int) error {
	kv, err := js.KeyValue(ctx, names.Bucket())
	if err != nil {
		return err
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				id := fmt.Sprintf("reg-conn-%07d==", i)
				ev := subjects.ConnectEvent{ConnectionID: id, Token: subjects.Token(id), ConnectedAt: time.Now().UTC(),
					SourceIP: "203.0.113.7", ServiceID: "service-bench", Stage: "release",
					UserID: "user-" + strconv.Itoa(int(i%50000)), Groups: []string{"room-" + strconv.Itoa(int(i%1000))}}
				data, _ := json.Marshal(ev)
				if _, err := kv.Put(ctx, ev.Token, data); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("register: %w", err)
	}
	fmt.Printf("registry:  %d connections registered in %v\n", n, time.Since(start).Round(time.Millisecond))
	return nil
}

// childBridge runs only a bridge against the given NATS URL, waits until it
// indexed want connections, and prints its resident memory.
func childBridge(args []string) int {
	if len(args) != 3 {
		fmt.Println("child-bridge <nats-url> <push-url> <registry-size>")
		return 2
	}
	want, _ := strconv.Atoi(args[2])
	nc, err := nats.Connect(args[0])
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer nc.Close()
	b, err := bridge.New(bridge.Options{PushURL: args[1], Partitions: partitions}, bridge.Deps{Conn: nc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	start := time.Now()
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		fmt.Println(err)
		return 1
	}
	defer b.Stop(ctx)
	for {
		mfs, _ := b.Gatherer().Gather()
		size := 0.0
		for _, mf := range mfs {
			if mf.GetName() == "wsbridge_registry_connections" {
				size = mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		if int(size) >= want || time.Since(start) > 2*time.Minute {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	runtime.GC()
	if p := os.Getenv("WSBRIDGE_BENCH_HEAPPROFILE"); p != "" {
		if err := writeProfile("heap", p); err != nil {
			fmt.Println(err)
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("bridge process indexed %d connections in %v: VmRSS %s (peak %s), Go heap in use %.1f MB after GC\n",
		want, took.Round(time.Millisecond), procStatus("VmRSS:"), procStatus("VmHWM:"), float64(ms.HeapInuse)/(1<<20))
	return 0
}

func procStatus(field string) string {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(v)
			if len(f) == 2 {
				kb, _ := strconv.Atoi(f[0])
				return fmt.Sprintf("%.1f MB", float64(kb)/1024)
			}
		}
	}
	return "unknown"
}

// startCPUProfile starts a CPU profile into path ("" profiles nothing) and
// returns what stops it.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
