package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/subjects"
)

// slowTarget answers like the gateway after a fixed latency and records,
// per push, which bridge sent it (the first path element) and when.
type slowTarget struct {
	latency time.Duration
	mu      sync.Mutex
	n       int
	pushes  []scalePush
	record  bool
}

type scalePush struct {
	bridge, conn string
	at           time.Time
}

func (tg *slowTarget) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	time.Sleep(tg.latency)
	var body subjects.PushBody
	data, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(data, &body)
	b, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	tg.mu.Lock()
	tg.n++
	if tg.record {
		tg.pushes = append(tg.pushes, scalePush{bridge: b, conn: body.WebSocket.SecConnectionID, at: time.Now()})
	}
	tg.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"errNo":0,"errMsg":"ok"}`))
}

func (tg *slowTarget) count() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.n
}

// runScale measures the drain rate of 1, 2 and 3 bridges at a fixed
// gateway latency (medians of runs, and the ratio to one bridge measured in
// the same run), then failover times over kills of real bridge processes.
func runScale(n, conns, conc, runs, kills int, latency time.Duration) error {
	s, _, js, done, err := benchNATS("wsbridge-bench-scale-")
	if err != nil {
		return err
	}
	defer done()
	names := subjects.MustNew("")
	ctx := context.Background()
	tg := &slowTarget{latency: latency}
	srv := httptest.NewServer(tg)
	defer srv.Close()
	tokens := make([]string, conns)
	for i := range tokens {
		tokens[i] = subjects.Token(fmt.Sprintf("scale-conn-%06d==", i))
	}
	fmt.Printf("wsbridge bench -scale: %d messages over %d connections, gateway latency %v, concurrency %d per bridge, %d runs\n",
		n, conns, latency, conc, runs)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	rates := map[int][]float64{}
	for r := 0; r < runs; r++ {
		for _, k := range []int{1, 2, 3} {
			// The bridges start and share the partitions first; the
			// clock runs from the first publish of the backlog.
			var bs []*bridge.Bridge
			for i := 0; i < k; i++ {
				bnc, err := nats.Connect(s.ClientURL())
				if err != nil {
					return err
				}
				defer bnc.Close()
				b, err := bridge.New(bridge.Options{PushURL: fmt.Sprintf("%s/b%d/api", srv.URL, i), Concurrency: conc, ShutdownTimeout: 5 * time.Second, Partitions: partitions},
					bridge.Deps{Conn: bnc, Logger: quiet})
				if err != nil {
					return err
				}
				if err := b.Start(ctx); err != nil {
					return err
				}
				bs = append(bs, b)
			}
			settled := time.Now().Add(30 * time.Second)
			for !spread(bs) && time.Now().Before(settled) {
				time.Sleep(50 * time.Millisecond)
			}
			owned := func() []int {
				var o []int
				for _, b := range bs {
					o = append(o, len(b.Owned()))
				}
				return o
			}
			split := owned()
			base := tg.count()
			cpu0 := cpuTime()
			start := time.Now()
			for i := 0; i < n; i++ {
				if _, err := js.PublishAsync(names.Send(tokens[i%conns]), []byte("x"), stallWait); err != nil {
					return err
				}
				if i%2000 == 1999 {
					<-js.PublishAsyncComplete()
				}
			}
			for tg.count()-base < n {
				if time.Since(start) > 10*time.Minute {
					return fmt.Errorf("%d bridges: %d of %d pushed", k, tg.count()-base, n)
				}
				time.Sleep(time.Millisecond)
			}
			took := time.Since(start)
			cpu := cpuTime() - cpu0
			for _, b := range bs {
				_ = b.Stop(ctx)
			}
			rate := float64(n) / took.Seconds()
			rates[k] = append(rates[k], rate)
			fmt.Printf("run %d: %d bridge(s): %8.0f msg/s (%v; ratio to 1 bridge in this run %.2f; partitions %v; process CPU %.0f µs/msg, %.0f%% of a CPU)\n",
				r+1, k, rate, took.Round(time.Millisecond), rate/rates[1][r], split, float64(cpu.Microseconds())/float64(n), 100*cpu.Seconds()/took.Seconds())
		}
	}
	for _, k := range []int{1, 2, 3} {
		ratios := make([]float64, runs)
		for r := range ratios {
			ratios[r] = rates[k][r] / rates[1][r]
		}
		fmt.Printf("median: %d bridge(s): %8.0f msg/s, ratio to 1 bridge %.2f (per run %.2f)\n", k, median(rates[k]), median(ratios), ratios)
	}
	if kills > 0 {
		return failovers(s.ClientURL(), srv.URL, tg, js, names, tokens[:min(40, len(tokens))], kills)
	}
	return nil
}

// spread reports whether the bridges share every partition, each some.
func spread(bs []*bridge.Bridge) bool {
	total := 0
	for _, b := range bs {
		if len(b.Owned()) == 0 {
			return false
		}
		total += len(b.Owned())
	}
	return total == partitions
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// failovers runs three bridge processes while messages flow, SIGKILLs one
// of them kills times (restarting it each time), then SIGTERMs one as many
// times, and prints how long the victim's partitions went without a push.
func failovers(natsURL, pushURL string, tg *slowTarget, js jetstream.JetStream, names subjects.Names, tokens []string, kills int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	procs := map[string]*exec.Cmd{}
	start := func(name string) error {
		cmd := exec.Command(exe, "child-scale-bridge", natsURL, pushURL+"/"+name+"/api")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		procs[name] = cmd
		return nil
	}
	defer func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_, _ = c.Process.Wait()
		}
	}()
	for _, name := range []string{"p0", "p1", "p2"} {
		if err := start(name); err != nil {
			return err
		}
	}
	tg.mu.Lock()
	tg.record, tg.pushes = true, nil
	tg.mu.Unlock()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a steady flow: every connection, every 50 ms
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for _, t := range tokens {
				_, _ = js.PublishAsync(names.Send(t), []byte("x"), stallWait)
			}
		}
	}()
	time.Sleep(8 * time.Second) // the three settle their partitions
	gen := 0
	measure := func(sig syscall.Signal, label string) ([]time.Duration, error) {
		var times []time.Duration
		for i := 0; i < kills; i++ {
			victim := fmt.Sprintf("p%d", rand.IntN(3))
			var name string
			for nm := range procs {
				if strings.HasPrefix(nm, victim) {
					name = nm
				}
			}
			at := time.Now()
			_ = procs[name].Process.Signal(sig)
			_, _ = procs[name].Process.Wait()
			delete(procs, name)
			gen++
			if err := start(fmt.Sprintf("%s-%d", victim, gen)); err != nil {
				return nil, err
			}
			time.Sleep(10 * time.Second) // the lease, then the rebalance back
			tg.mu.Lock()
			pushes := slices.Clone(tg.pushes)
			tg.mu.Unlock()
			d := gap(pushes, name, at)
			times = append(times, d)
			fmt.Printf("%s %d: %s's partitions resumed after %v\n", label, i+1, name, d.Round(time.Millisecond))
		}
		return times, nil
	}
	kt, err := measure(syscall.SIGKILL, "SIGKILL")
	if err != nil {
		return err
	}
	tt, err := measure(syscall.SIGTERM, "SIGTERM")
	if err != nil {
		return err
	}
	show := func(ds []time.Duration) string {
		f := make([]float64, len(ds))
		for i, d := range ds {
			f[i] = d.Seconds()
		}
		s := slices.Clone(f)
		slices.Sort(s)
		return fmt.Sprintf("median %.2fs, max %.2fs", median(f), s[len(s)-1])
	}
	fmt.Printf("failover over %d SIGKILLs: %s; over %d SIGTERMs: %s\n", kills, show(kt), kills, show(tt))
	return nil
}

// gap is how long after at every connection the victim pushed to in the
// second before at waited for a push from another bridge.
func gap(pushes []scalePush, victim string, at time.Time) time.Duration {
	conns := map[string]bool{}
	for _, p := range pushes {
		if p.bridge == victim && p.at.Before(at) && p.at.After(at.Add(-time.Second)) {
			conns[p.conn] = true
		}
	}
	var worst time.Duration
	for c := range conns {
		for _, p := range pushes {
			if p.conn == c && p.bridge != victim && p.at.After(at) {
				worst = max(worst, p.at.Sub(at))
				break
			}
		}
	}
	return worst
}

// childScaleBridge runs one bridge until SIGTERM (then stops it cleanly).
func childScaleBridge(args []string) int {
	if len(args) != 2 {
		fmt.Println("child-scale-bridge <nats-url> <push-url>")
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	nc, err := nats.Connect(args[0], nats.MaxReconnects(-1))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer nc.Close()
	b, err := bridge.New(bridge.Options{PushURL: args[1], Concurrency: 16, Partitions: partitions}, bridge.Deps{Conn: nc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if err := b.Run(ctx); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}
