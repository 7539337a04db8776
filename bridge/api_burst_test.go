package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// natsProcess runs nats-server, built from the module's version, with
// JetStream as a process of its own, and returns its URL.
func natsProcess(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("build nats-server: %v\n%s", err, out)
	}
	return natstest.StartProcess(t, bin, fmt.Sprintf("jetstream { store_dir: %q }", t.TempDir())).URL
}

// apiOutcome is what became of one API request.
type apiOutcome struct {
	Large bool
	Err   string // the API's {"error"}, or the request's own failure
	Fail  bool   // no answer: the request failed (timed out, no responders)
	Took  time.Duration
}

// apiBurst sends every request at once from goroutines of its own, each
// waiting at most bound for its answer (a hang bound, not a speed).
func apiBurst(nc *nats.Conn, subject string, reqs [][]byte, large func(i int) bool, bound time.Duration) []apiOutcome {
	out := make([]apiOutcome, len(reqs))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, data := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			m, err := nc.Request(subject, data, bound)
			o := apiOutcome{Large: large(i), Took: time.Since(t0)}
			if err != nil {
				o.Fail, o.Err = true, err.Error()
			} else {
				var e subjects.APIError
				if json.Unmarshal(m.Data, &e) == nil {
					o.Err = e.Error
				}
			}
			out[i] = o
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// burstRequests are the attack's requests: four of a NATS message's full
// size to group.add on one record, then an ordinary one on a record of its
// own, and again.
func burstRequests(maxPayload int64, large, small int) (reqs [][]byte, isLarge func(int) bool) {
	tok := subjects.Token("burst-target")
	pad := strings.Repeat("x", int(maxPayload)-4096)
	for i := 0; i < large+small; i++ {
		if i%5 == 4 {
			reqs = append(reqs, []byte(fmt.Sprintf(`{"token":%q,"groups":["g%d"]}`, subjects.Token(fmt.Sprintf("ordinary-%d", i/5)), i)))
		} else {
			reqs = append(reqs, []byte(fmt.Sprintf(`{"token":%q,"groups":["big"],"pad":%q}`, tok, pad)))
		}
	}
	return reqs, func(i int) bool { return len(reqs[i]) > 4096 }
}

// TestAPIBurstClientProcess is the attacker of TestAPIBurstKeepsPartitions
// when it re-executes this test binary (so that the attacker's work is not
// the bridge's process's); otherwise it is skipped. It prints the outcomes
// as JSON.
func TestAPIBurstClientProcess(t *testing.T) {
	url := os.Getenv("WSBRIDGE_API_BURST_URL")
	if url == "" {
		t.Skip("only runs as TestAPIBurstKeepsPartitions' attacker process")
	}
	large, _ := strconv.Atoi(os.Getenv("WSBRIDGE_API_BURST_LARGE"))
	small, _ := strconv.Atoi(os.Getenv("WSBRIDGE_API_BURST_SMALL"))
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reqs, isLarge := burstRequests(nc.MaxPayload(), large, small)
	outs := apiBurst(nc, subjects.MustNew("ws").GroupAdd(), reqs, isLarge, 60*time.Second)
	if err := json.NewEncoder(os.Stdout).Encode(outs); err != nil {
		t.Fatal(err)
	}
}

// partitionWatch samples how many partitions a bridge owns until stopped,
// and keeps the fewest.
func partitionWatch(b *Bridge) (stop func() (fewest int)) {
	fewest := atomic.Int64{}
	n, _ := b.own.status()
	fewest.Store(int64(n))
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if n, _ := b.own.status(); int64(n) < fewest.Load() {
				fewest.Store(int64(n))
			}
		}
	}()
	return func() int {
		close(done)
		<-finished
		return int(fewest.Load())
	}
}

// median of the durations of the outcomes that pass keep.
func medianTook(outs []apiOutcome, keep func(apiOutcome) bool) time.Duration {
	var d []time.Duration
	for _, o := range outs {
		if keep(o) {
			d = append(d, o.Took)
		}
	}
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

// TestAPIBurstKeepsPartitions is the attack of 200 requests of a NATS
// message's full size (1 MB) sent to group.add at once, with 50 ordinary
// ones among them, while the bridge owns every partition. The requests
// shared the bridge's one NATS connection with its leases: the server cut
// it as a slow consumer and every partition was dropped. The API has a
// connection of its own now and refuses a request past
// --api-max-request-bytes unread: each large request gets that error, each
// ordinary one its answer (under a load that the bridge's process cannot
// read it all, a request may be dropped by that connection instead, or
// lost when the server cuts it: unanswered, counted or logged), and the
// bridge keeps every partition.
func TestAPIBurstKeepsPartitions(t *testing.T) {
	const large, small = 200, 50
	// The NATS server and the attacker run as processes of their own, as
	// they do in production: the bytes relayed to the bridge, and its
	// refusals, are the test; a server and an attacker in the bridge's
	// process under the race detector would starve it of CPU whatever its
	// connections.
	url := natsProcess(t)
	dial := func() *nats.Conn {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	nc := dial()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, nc: nc, js: js, names: subjects.MustNew("ws"), tg: newTarget(t, nil)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := subjects.Provision(ctx, js, e.names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	b := startBridge(t, Options{PushURL: e.tg.srv.URL + "/api-secret", Concurrency: 16}, Deps{Conn: dial(), Logger: testLogger(t)})
	// Each ordinary request changes a record of its own: one record
	// changed 50 times at once has its writers retry past their limit.
	ids := []string{"burst-target"}
	for i := 0; i < small; i++ {
		ids = append(ids, fmt.Sprintf("ordinary-%d", i))
	}
	e.register(ids...)
	waitFor(t, "the records indexed", 10*time.Second, func() bool { return b.idx.size() == len(ids) })
	owned, _ := b.own.status()
	if owned != b.opts.Partitions {
		t.Fatalf("the bridge owns %d partitions of %d before the burst", owned, b.opts.Partitions)
	}
	rebalances := testutil.ToFloat64(b.pm.Rebalances)

	stop := partitionWatch(b)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAPIBurstClientProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "WSBRIDGE_API_BURST_URL="+url,
		"WSBRIDGE_API_BURST_LARGE="+strconv.Itoa(large), "WSBRIDGE_API_BURST_SMALL="+strconv.Itoa(small))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	fewest := stop()
	if err != nil {
		t.Fatalf("attacker process: %v\n%s\n%s", err, out, stderr.String())
	}
	// The JSON is the last line; the test binary prints its verdict after.
	var outs []apiOutcome
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "[") {
			if err := json.Unmarshal([]byte(line), &outs); err != nil {
				t.Fatalf("attacker's outcomes: %v\n%s", err, out)
			}
		}
	}
	if len(outs) != large+small {
		t.Fatalf("attacker reported %d outcomes, want %d:\n%s", len(outs), large+small, out)
	}
	nLarge := 0
	for _, o := range outs {
		if o.Large {
			nLarge++
		}
	}
	client := dial()
	tok := subjects.Token("burst-target")

	var tooLarge, ok, failed, other int
	for _, o := range outs {
		switch {
		case o.Fail:
			failed++
		case o.Large && strings.Contains(o.Err, "too large"):
			tooLarge++
		case !o.Large && o.Err == "":
			ok++
		default:
			other++
		}
	}
	// A request the API's connection dropped, arriving faster than the
	// bridge took requests in, gets no answer: counted, and logged.
	dropped := int(testutil.ToFloat64(b.m.APIRequests.WithLabelValues(metrics.APIDropped)))
	// So does one in flight when the server cut the API's connection as a
	// slow consumer (logged): the leases never see it.
	cuts := b.api.nc.Stats().Reconnects
	t.Logf("%d requests of 1 MB and %d ordinary ones at once: %d large refused as too large (median %v), %d ordinary answered (median %v), %d without an answer (%d dropped by the API's connection, which was cut %d times), %d other; fewest partitions owned %d of %d",
		nLarge, len(outs)-nLarge, tooLarge, medianTook(outs, func(o apiOutcome) bool { return o.Large && !o.Fail }).Round(time.Millisecond),
		ok, medianTook(outs, func(o apiOutcome) bool { return !o.Large && !o.Fail }).Round(time.Millisecond), failed, dropped, cuts, other, fewest, b.opts.Partitions)
	wrong := map[string]int{}
	for _, o := range outs {
		if !o.Fail && (o.Large && !strings.Contains(o.Err, "too large") || !o.Large && o.Err != "") {
			wrong[fmt.Sprintf("large %v: answered %q", o.Large, o.Err)]++
		}
	}
	for w, n := range wrong {
		t.Errorf("%d requests, %s", n, w)
	}
	if failed > dropped && cuts == 0 {
		t.Errorf("%d requests got no answer, %d were dropped by the API's connection, which was never cut", failed, dropped)
	}
	if tooLarge == 0 || ok == 0 {
		t.Errorf("%d of %d large requests refused as too large, %d of %d ordinary ones answered", tooLarge, nLarge, ok, len(outs)-nLarge)
	}
	if fewest != b.opts.Partitions {
		t.Errorf("the bridge owned only %d of its %d partitions during the burst", fewest, b.opts.Partitions)
	}
	if d := testutil.ToFloat64(b.pm.Rebalances) - rebalances; d != 0 {
		t.Errorf("%v partitions moved during the burst", d)
	}
	if n := testutil.ToFloat64(b.m.APIRequests.WithLabelValues(metrics.APITooLarge)); int(n) < tooLarge {
		t.Errorf("api_requests_total{result=too_large} = %v, below the %d refusals answered", n, tooLarge)
	}
	// The leases were renewed throughout, and are still.
	if err := b.Ready(); err != nil {
		t.Errorf("bridge not ready after the burst: %v", err)
	}
	c, err := subjects.NewClient(client, "")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := c.GroupAdd(t.Context(), tok, "after")
	if err != nil {
		t.Fatalf("group.add after the burst: %v", err)
	}
	if strings.Join(rec.Groups, ",") != "after" {
		t.Errorf("record after the burst: groups %v, want [after]: none of the large requests read", rec.Groups)
	}
}

// TestAPIQueueFullAnswersBusy fills the API's queue with slow requests
// (conn.list over many records) from many requesters at once: a request
// finding the queue full is answered "busy" at once instead of waiting
// without bound, and the bridge answers normally again afterwards.
func TestAPIQueueFullAnswersBusy(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(func(o *Options) { o.APIWorkers, o.APIQueue = 1, 2 })
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("listed-%d", i)
	}
	e.registerEvents(func(ev *subjects.ConnectEvent) {
		ev.State = json.RawMessage(`{"pad":"` + strings.Repeat("s", 1024) + `"}`)
	}, ids...)
	waitFor(t, "the records indexed", 10*time.Second, func() bool { return b.idx.size() == len(ids) })
	client := connect(t, e.s)

	var outs []apiOutcome
	busy := 0
	for round := 0; busy == 0; round++ {
		if round == 20 {
			t.Fatalf("20 rounds of 100 conn.list at once on 1 worker and a queue of 2: none was answered busy")
		}
		reqs := make([][]byte, 100)
		for i := range reqs {
			reqs[i] = []byte(`{}`)
		}
		outs = apiBurst(client, e.names.ConnList(), reqs, func(int) bool { return false }, 60*time.Second)
		for _, o := range outs {
			switch {
			case o.Fail:
				t.Errorf("a conn.list got no answer: %s", o.Err)
			case strings.HasPrefix(o.Err, "busy"):
				busy++
			case o.Err != "":
				t.Errorf("a conn.list answered %q", o.Err)
			}
		}
	}
	t.Logf("100 conn.list of 100 records at once, 1 worker, queue of 2: %d answered busy (median %v), %d answered (median %v)",
		busy, medianTook(outs, func(o apiOutcome) bool { return strings.HasPrefix(o.Err, "busy") }).Round(time.Millisecond),
		len(outs)-busy, medianTook(outs, func(o apiOutcome) bool { return o.Err == "" }).Round(time.Millisecond))
	if n := testutil.ToFloat64(b.m.APIRequests.WithLabelValues(metrics.APIBusy)); n < float64(busy) {
		t.Errorf("api_requests_total{result=busy} = %v, want at least %d", n, busy)
	}
	c, err := subjects.NewClient(client, "")
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.ConnList(t.Context(), subjects.ConnListRequest{Limit: 1})
	if err != nil || r.Total != len(ids) {
		t.Fatalf("conn.list after the burst: %+v %v", r.Total, err)
	}
}
