package capacity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// fdLimit is the gateway's RLIMIT_NOFILE in TestFileLimit: it runs out at
// a few hundred connections instead of tens of thousands.
const fdLimit = 400

// answerWait bounds a wait for an answer that must come at once: it is a
// bound on a hang, not a speed figure (those are logged).
const answerWait = 10 * time.Second

// TestFileLimit runs a gateway with RLIMIT_NOFILE 400 and --max-connections
// far above it. The cap is clamped to the limit less the reserve, and says
// so; clients up to the cap are upgraded and the next one is refused with
// 503 at once; /healthz and /metrics answer. Then idle sockets take every
// descriptor left: an upgrade is still refused at once, /healthz still
// answers, and the failed accepts are counted. The registry holds exactly
// the open connections throughout; once some clients leave, others take
// their places.
func TestFileLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the wsbridge binary with a low file limit")
	}
	bin := binary(t)
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew(subjects.DefaultPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := subjects.Provision(ctx, js, names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	reg, err := js.KeyValue(ctx, names.Bucket())
	if err != nil {
		t.Fatal(err)
	}

	gw := start(t, bin, "gateway", fdLimit, true, "gateway", "--nats-url", s.ClientURL(),
		"--addr", "127.0.0.1:0", "--push-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--push-token", "t0ken", "--instance-id", "fd", "--max-connections", "100000",
		"--max-http-connections", "64", "--handshake-timeout", "60s", "--read-timeout", "60s")
	pid := gw.cmd.Process.Pid
	t.Logf("gateway pid %d, RLIMIT_NOFILE %d, %d descriptors open at start", pid, fdLimit, openFiles(pid))

	// Up to the cap, every upgrade is served; the first past it is refused.
	var conns []*websocket.Conn
	var refusal dialResult
	for i := 0; i < fdLimit+50; i++ {
		r := dialOne(gw.urls["ws"], i, answerWait)
		if r.err != nil {
			refusal = r
			break
		}
		conns = append(conns, r.c)
	}
	if refusal.err == nil {
		t.Fatalf("%d upgrades all succeeded with a file limit of %d", len(conns), fdLimit)
	}
	if refusal.status != http.StatusServiceUnavailable {
		t.Fatalf("upgrade past the cap, after %d connections: %v (HTTP %d), want 503", len(conns), refusal.err, refusal.status)
	}
	t.Logf("%d connections open; the next upgrade refused with %d in %v", len(conns), refusal.status, refusal.took)
	if !strings.Contains(gw.out.String(), "connection cap clamped to the file descriptor limit") ||
		!strings.Contains(gw.out.String(), fmt.Sprintf("effective_max_connections=%d", len(conns))) {
		t.Errorf("the gateway did not log its cap clamped to %d:\n%s", len(conns), gw.out.String())
	}
	health := func(when string) {
		t.Helper()
		for _, path := range []string{"/healthz", "/metrics"} {
			began := time.Now()
			status, err := get(gw.urls["ops"] + path)
			if err != nil || status != http.StatusOK {
				t.Fatalf("%s %s: HTTP %d, %v", when, path, status, err)
			}
			t.Logf("%s: %s answered in %v", when, path, time.Since(began))
		}
	}
	health("at the cap")
	records := func(want int, when string) {
		t.Helper()
		waitRecords(t, reg, want, when, waitTimeout)
	}
	records(len(conns), "at the cap")

	// Idle sockets, not upgraded, on every listener take the descriptors
	// the reserve left, until accepts fail.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			_ = c.Close()
		}
	}()
	addr := func(u string) string {
		u = strings.TrimPrefix(strings.TrimPrefix(u, "ws://"), "http://")
		host, _, _ := strings.Cut(u, "/")
		return host
	}
	targets := []string{addr(gw.urls["push"]), addr(gw.urls["ws"]), addr(gw.urls["ops"])}
	for i := 0; i < 3*fdLimit && openFiles(pid) < fdLimit; i++ {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%200))}, Timeout: answerWait}
		c, err := d.Dial("tcp", targets[i%3])
		if err != nil {
			t.Fatalf("idle socket %d: %v", i, err)
		}
		idle = append(idle, c)
		if i%20 == 19 {
			time.Sleep(20 * time.Millisecond) // let the gateway accept them
		}
	}
	t.Logf("%d idle sockets opened; the gateway holds %d descriptors of %d", len(idle), openFiles(pid), fdLimit)
	r := dialOne(gw.urls["ws"], 0, answerWait)
	if r.err == nil {
		t.Fatalf("an upgrade succeeded with every descriptor taken")
	}
	// Refused with 503, or closed at once (a listener at its cap closes a
	// new connection, or one waiting for a request, to make room): either
	// way the client is told, and does not wait for its own timeout.
	if r.status != http.StatusServiceUnavailable && (r.status != 0 || errors.Is(r.err, context.DeadlineExceeded)) {
		t.Fatalf("upgrade with every descriptor taken: %v (HTTP %d), want 503 or a close", r.err, r.status)
	}
	t.Logf("out of descriptors: upgrade refused (HTTP %d, %v) in %v", r.status, r.err, r.took)
	health("out of descriptors")
	accepts := gw.metric(t, "wsbridge_gateway_accept_errors_total")
	t.Logf("accepts failed for want of a descriptor: %v", accepts)
	if accepts == 0 {
		t.Errorf("no failed accept counted with %d descriptors of %d open", openFiles(pid), fdLimit)
	}
	if !strings.Contains(gw.out.String(), "out of file descriptors") {
		t.Errorf("the gateway did not log running out of descriptors")
	}
	for _, c := range idle {
		_ = c.Close()
	}
	idle = nil
	records(len(conns), "after running out of descriptors")

	// Ten leave; ten others take their places.
	for _, c := range conns[:10] {
		_ = c.Close(websocket.StatusNormalClosure, "bye")
	}
	conns = conns[10:]
	records(len(conns), "once ten left")
	more, refusedMeanwhile, err := dialMany(gw.urls["ws"], 1000, 10, 10, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, more...)
	t.Logf("ten others connected (%d refusals while the leavers' slots were freed)", refusedMeanwhile)
	records(len(conns), "once ten others came")
	for _, c := range conns {
		_ = c.CloseNow()
	}
}

// openFiles counts the descriptors process pid holds.
func openFiles(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// get fetches url, bounded by answerWait.
func get(url string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), answerWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}
