package capacity

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// dropWithin is the bound of the promise: every dropped connection
// announced and the registry empty, with every instance still running.
const dropWithin = 60 * time.Second

// envInt reads a size of TestMassDrop from the environment.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// TestMassDrop is a balancer restart: every client of N instances drops at
// once, with a function timeout short enough that NATS cannot take every
// cleanup in time. Every connection gets exactly one disconnect event, with
// reason client, and the registry is empty within a minute, no instance
// restarted. Then every client comes back at once (retrying a refusal after
// a jittered backoff): each gets exactly one connect event and one record.
//
// By default 2 instances × 2,000 connections (× 500 under the race
// detector, as CI runs it). The size is set with
// WSBRIDGE_CAPACITY_INSTANCES, WSBRIDGE_CAPACITY_CONNS (per instance) and
// WSBRIDGE_CAPACITY_FUNCTION_TIMEOUT (150ms); see test/README.md.
func TestMassDrop(t *testing.T) {
	if testing.Short() {
		t.Skip("runs wsbridge gateway processes with thousands of clients")
	}
	instances := envInt(t, "WSBRIDGE_CAPACITY_INSTANCES", 2)
	defConns := 2000
	if raceEnabled {
		// NATS runs in this process and the clients are this binary:
		// under the race detector a quarter of the clients still drop and
		// storm at once, in a fraction of the time.
		defConns = 500
	}
	per := envInt(t, "WSBRIDGE_CAPACITY_CONNS", defConns)
	fnTimeout := os.Getenv("WSBRIDGE_CAPACITY_FUNCTION_TIMEOUT")
	if fnTimeout == "" {
		fnTimeout = "150ms"
	}
	total := instances * per
	bin := binary(t)
	s := natstest.Start(t, func(o *server.Options) { o.MaxPayload = 1 << 20 })
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

	var gws []*proc
	for i := range instances {
		gws = append(gws, start(t, bin, fmt.Sprintf("gateway-%d", i), 0, true, "gateway", "--nats-url", s.ClientURL(),
			"--addr", "127.0.0.1:0", "--push-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--push-token", "t0ken", "--instance-id", fmt.Sprintf("cap-%d", i),
			"--max-connections", strconv.Itoa(per+1000), "--function-timeout", fnTimeout))
	}
	// One client process per instance, all connecting at once.
	connectLimit := 5 * time.Minute
	began := time.Now()
	var cls []*clients
	for i, gw := range gws {
		cls = append(cls, startClients(t, gw.urls["ws"], i*per, per))
	}
	allUp := func(round string) (time.Duration, int) {
		refusals := 0
		for _, c := range cls {
			n, _ := strconv.Atoi(c.expect(t, "up", connectLimit))
			refusals += n
		}
		took := time.Since(began)
		t.Logf("%s: %d clients connected in %v (%d upgrades refused and retried)", round, total, took.Round(time.Millisecond), refusals)
		return took, refusals
	}
	allUp("first connect")
	waitRecords(t, reg, total, "once every client connected", waitTimeout)
	accepted := registryKeys(t, reg)
	logFootprint(t, js, names, gws, per)
	before := readInbound(t, js, names)
	for token := range accepted {
		if n := before.connects[token]; n != 1 {
			t.Fatalf("connection %s: %d connect events", token, n)
		}
	}

	// The drop: every client's socket closed at once.
	began = time.Now()
	for _, c := range cls {
		c.say(t, "drop")
	}
	for _, c := range cls {
		c.expect(t, "dropped", waitTimeout)
	}
	t.Logf("drop: %d sockets closed by the clients in %v", total, time.Since(began).Round(time.Millisecond))
	// Listing the registry is itself work for NATS: it is listed once the
	// instances have no end left to finish (or the bound has passed).
	deadline := time.Now().Add(dropWithin)
	for time.Now().Before(deadline) {
		pending := 0.0
		for _, gw := range gws {
			pending += gw.metric(t, "wsbridge_gateway_retries_pending", `what="disconnect"`) + gw.metric(t, "wsbridge_gateway_connections")
		}
		if pending == 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	left := registryCount(t, reg)
	emptied := time.Since(began)
	var after inbound
	for {
		after = readInbound(t, js, names)
		announced := 0
		for token := range accepted {
			if len(after.discs[token]) > 0 {
				announced++
			}
		}
		if announced == total || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	var retries, dropped float64
	for _, gw := range gws {
		retries += gw.metric(t, "wsbridge_gateway_retries_total", `what="disconnect"`)
		dropped += gw.metric(t, "wsbridge_gateway_retries_dropped_total", `what="disconnect"`)
	}
	t.Logf("drop of %d: registry records left %d after %v; disconnect events for %d connections; cleanup retries %v, given up %v",
		total, left, emptied.Round(time.Millisecond), len(after.discs), retries, dropped)
	if left != 0 {
		t.Errorf("%d registry records left %v after the drop", left, dropWithin)
	}
	bad := 0
	for token := range accepted {
		d := after.discs[token]
		if len(d) != 1 || d[0] != subjects.ReasonClient {
			if bad++; bad <= 5 {
				t.Errorf("connection %s: disconnect events %q; want [client]", token, d)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d connections without exactly one client disconnect event", bad, total)
	}
	t.Logf("%d upgrades refused after their register invocation timed out: each announced as many disconnects as connects", balanced(t, after, accepted))
	for _, gw := range gws {
		select {
		case err := <-gw.done:
			t.Fatalf("%s exited during the drop: %v", gw.name, err)
		default:
		}
	}

	// The storm: every client back at once.
	began = time.Now()
	for _, c := range cls {
		c.say(t, "up")
	}
	storm, refusals := allUp("reconnect storm")
	waitRecords(t, reg, total, "after the storm", waitTimeout)
	back := registryKeys(t, reg)
	var again inbound
	waitFor(t, "the connect events of the storm", waitTimeout, func() bool {
		again = readInbound(t, js, names)
		for token := range back {
			if again.connects[token] == 0 {
				return false
			}
		}
		return true
	})
	for token := range back {
		if n := again.connects[token]; n != 1 || accepted[token] {
			t.Errorf("connection %s of the storm: %d connect events (connected before: %v)", token, n, accepted[token])
		}
	}
	// Refused ones may still be being forgotten: the storm's stragglers.
	waitFor(t, "every refused upgrade of the storm forgotten", waitTimeout, func() bool {
		again = readInbound(t, js, names)
		for token, c := range again.connects {
			if !back[token] && !accepted[token] && len(again.discs[token]) < c {
				return false
			}
		}
		return true
	})
	refusedFns := balanced(t, again, accepted, back)
	t.Logf("reconnect storm: %d clients back in %v, %d refusals retried, %d records, one connect event each; %d refused after their register timed out, each balanced",
		total, storm.Round(time.Millisecond), refusals, len(back), refusedFns)
}

// logFootprint logs what the open connections cost: each gateway's RSS per
// connection, and the bytes per message of the registry and WS_IN.
func logFootprint(t *testing.T, js jetstream.JetStream, names subjects.Names, gws []*proc, per int) {
	t.Helper()
	for _, gw := range gws {
		if kb := rssKB(gw.cmd.Process.Pid); kb > 0 {
			t.Logf("%s: RSS %d MiB with %d connections, %.1f KiB per connection", gw.name, kb>>10, per, float64(kb)/float64(per))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for _, name := range []string{"KV_" + names.Bucket(), names.StreamIn()} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs > 0 {
			t.Logf("%s: %d messages, %d bytes, %d bytes each", name, info.State.Msgs, info.State.Bytes, info.State.Bytes/info.State.Msgs)
		}
	}
}

// rssKB is a process's resident set in KiB, 0 when unknown.
func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}
