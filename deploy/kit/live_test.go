package kit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// wsbridgeBinary builds the wsbridge command once for the tests that run it.
func wsbridgeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "wsbridge-kit-bin-")
		if buildErr != nil {
			return
		}
		out, err := command(repo, nil, "go", "build", "-o", filepath.Join(binDir, "wsbridge"), ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "wsbridge")
}

// process is a running wsbridge command, stopped with SIGTERM when the test ends.
type process struct {
	logFile string // its stdout and stderr
	exited  chan struct{}
	err     error
}

// output is what the process printed so far.
func (p *process) output() string {
	b, _ := os.ReadFile(p.logFile)
	return string(b)
}

func start(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	dir := t.TempDir()
	p := &process{logFile: filepath.Join(dir, "output.log"), exited: make(chan struct{})}
	out, err := os.Create(p.logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// waitLog waits for the first submatch of re in the process's output.
func (p *process) waitLog(t *testing.T, what string, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.After(90 * time.Second)
	for {
		if m := re.FindStringSubmatch(p.output()); m != nil {
			return m[1]
		}
		select {
		case <-p.exited:
			t.Fatalf("exited (%v) before logging %s:\n%s", p.err, what, p.output())
		case <-deadline:
			t.Fatalf("no %s logged in 90s:\n%s", what, p.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// scrapeNames fetches a /metrics page (retrying while the server starts) and
// returns the names of the series it serves.
func (p *process) scrapeNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for {
		body, err := get(ctx, url)
		if err == nil {
			return exposedNames(body)
		}
		select {
		case <-p.exited:
			t.Fatalf("exited (%v) before serving %s:\n%s", p.err, url, p.output())
		case <-ctx.Done():
			t.Fatalf("GET %s: %v\n%s", url, err, p.output())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return b, err
}

// exposedNames reads the Prometheus text format: each sample line's name.
func exposedNames(body []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			names[l[:i]] = true
		}
	}
	return names
}

// operatorSeries is every series the dashboard and the alert rules select,
// with where each is used.
func operatorSeries(t *testing.T) map[string][]string {
	t.Helper()
	series := dashboardSeries(t, readDashboard(t))
	for _, a := range readAlerts(t, readRepoFile(t, "deploy/prometheus/alerts.yml")) {
		names, err := seriesNames(a.Expr)
		if err != nil {
			t.Errorf("alert %s: %v", a.Alert, err)
		}
		for _, n := range names {
			series[n] = append(series[n], "alert "+a.Alert)
		}
	}
	return series
}

// allServed reports whether every wanted series is in served.
func allServed(series map[string][]string, served map[string]bool, want func(string) bool) bool {
	for name := range series {
		if want(name) && !served[name] {
			return false
		}
	}
	return true
}

func checkServed(t *testing.T, series map[string][]string, served map[string]bool, want func(string) bool) {
	t.Helper()
	var checked []string
	for name, users := range series {
		if !want(name) {
			continue
		}
		checked = append(checked, name)
		if !served[name] {
			t.Errorf("%s (used by %s) is not served", name, strings.Join(users, ", "))
		}
	}
	sort.Strings(checked)
	if len(checked) == 0 {
		t.Fatal("no series to check")
	}
	t.Logf("served: %s", strings.Join(checked, " "))
}

// TestOperatorSeriesServed runs the real binary and checks that every series
// the dashboard and the alert rules name is on its /metrics: the bridge's
// (with an embedded NATS server), then the gateway's, against that NATS.
func TestOperatorSeriesServed(t *testing.T) {
	series := operatorSeries(t)
	bin := wsbridgeBinary(t)
	// Every port is chosen by the process that listens on it and read from
	// its output: a port picked here could be taken before it is bound.
	bridge := start(t, bin, "bridge", "--push-url", "http://127.0.0.1:9/push", "--nats-listen", "127.0.0.1:0",
		"--data-dir", "data", "--http-addr", "127.0.0.1:0")
	natsURL := bridge.waitLog(t, "the embedded NATS URL", regexp.MustCompile(`EMBEDDED NATS.*? embedded_url=(\S+)`))
	opsAddr := bridge.waitLog(t, "the ops address", regexp.MustCompile(`serving ops endpoints".*? addr=(\S+)`))

	t.Run("bridge", func(t *testing.T) {
		want := func(n string) bool { return n != "up" && !strings.HasPrefix(n, "wsbridge_gateway_") }
		// Position commits are counted by result once a partition's
		// position moves: one broadcast (to nobody), published once the
		// bridge has provisioned WS_OUT and reads it, moves every
		// partition's.
		bridge.waitLog(t, "the bridge reading WS_OUT", regexp.MustCompile(`msg=(consuming) `))
		runIn(t, repo, nil, bin, "broadcast", "--nats-url", natsURL, "hello")
		// Per-partition series appear once the bridge holds its leases
		// and has sampled them: scrape until every series is there (or a
		// generous deadline passes, then report what is missing).
		var served map[string]bool
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			served = bridge.scrapeNames(t, "http://"+opsAddr+"/metrics")
			if allServed(series, served, want) || time.Now().After(deadline) {
				break
			}
		}
		checkServed(t, series, served, want)
	})
	t.Run("gateway", func(t *testing.T) {
		gw := start(t, bin, "gateway", "--nats-url", natsURL, "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
		metricsURL := gw.waitLog(t, "the ops address", regexp.MustCompile(`gateway ops +(http://\S+/metrics)`))
		served := gw.scrapeNames(t, metricsURL)
		checkServed(t, series, served, func(n string) bool { return strings.HasPrefix(n, "wsbridge_gateway_") })
	})
}
