// Package cluster shows wsbridge on more than one machine's worth of parts:
// a three-node NATS cluster with the streams replicated three times, and
// three bridge instances sharing the outbound partitions. The node leading
// the outbound stream and one bridge are stopped in the middle of the run;
// nothing may be lost and no connection may go back to an earlier message.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// startCluster runs three JetStream servers routed to each other.
func startCluster(t *testing.T) []*server.Server {
	t.Helper()
	ports := []int{natstest.FreePort(t), natstest.FreePort(t), natstest.FreePort(t)}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	var servers []*server.Server
	for i, p := range ports {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "wsbridge-test", Host: "127.0.0.1", Port: p},
			Routes:  routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		servers = append(servers, s)
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for _, s := range servers {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("cluster node not ready")
		}
	}
	// JetStream answers once the nodes have elected a meta leader.
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader := false
		for _, s := range servers {
			leader = leader || s.JetStreamIsLeader()
		}
		if leader {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no JetStream meta leader elected within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return servers
}

func urls(servers []*server.Server) string {
	var u []string
	for _, s := range servers {
		u = append(u, s.ClientURL())
	}
	return strings.Join(u, ",")
}

// target counts pushes per connection id and keeps their order.
type target struct {
	mu    sync.Mutex
	got   map[string]map[string]int // conn id -> data -> times
	seq   map[string][]int          // conn id -> message numbers in push order
	total int
}

func (tg *target) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body subjects.PushBody
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, `{"errNo":400,"errMsg":"bad body"}`, http.StatusBadRequest)
		return
	}
	tg.mu.Lock()
	m := tg.got[body.WebSocket.SecConnectionID]
	if m == nil {
		m = map[string]int{}
		tg.got[body.WebSocket.SecConnectionID] = m
	}
	m[body.WebSocket.Data]++
	var n int
	_, _ = fmt.Sscanf(body.WebSocket.Data, "m%d", &n)
	tg.seq[body.WebSocket.SecConnectionID] = append(tg.seq[body.WebSocket.SecConnectionID], n)
	tg.total++
	tg.mu.Unlock()
	_, _ = io.WriteString(w, `{"errNo":0,"errMsg":"ok"}`)
}

func (tg *target) distinct() (n, dups int) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for _, m := range tg.got {
		for _, c := range m {
			n++
			dups += c - 1
		}
	}
	return n, dups
}

// wentBack returns the connections whose pushes went back to an earlier
// message (a repeat of the latest is allowed).
func (tg *target) wentBack() []string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	var out []string
	for id, seq := range tg.seq {
		for i := 1; i < len(seq); i++ {
			if seq[i] < seq[i-1] {
				out = append(out, fmt.Sprintf("%s: %d after %d", id, seq[i], seq[i-1]))
				break
			}
		}
	}
	return out
}

func TestClusterBridgesSurviveTheStreamLeaderAndABridge(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test starts three servers; skipped with -short")
	}
	servers := startCluster(t)
	tg := &target{got: map[string]map[string]int{}, seq: map[string][]int{}}
	push := httptest.NewServer(tg)
	t.Cleanup(push.Close)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	dial := func(name string) *nats.Conn {
		nc, err := nats.Connect(urls(servers), nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var bridges []*bridge.Bridge
	for i := 0; i < 3; i++ {
		// Eight partitions: 32 replicated consumers take the test
		// cluster a while to create.
		opts := bridge.Options{PushURL: push.URL, Streams: subjects.StreamOptions{Replicas: 3}, Name: fmt.Sprintf("bridge-%d", i+1),
			ShutdownTimeout: 5 * time.Second, Partitions: 8}
		var b *bridge.Bridge
		var err error
		// The meta leader may still be electing: creating replicated
		// streams is retried until the cluster answers.
		deadline := time.Now().Add(60 * time.Second)
		for {
			b, err = bridge.New(opts, bridge.Deps{Conn: dial(opts.Name), Logger: log})
			if err == nil {
				actx, acancel := context.WithTimeout(ctx, 20*time.Second)
				err = b.Start(actx)
				acancel()
			}
			if err == nil || time.Now().After(deadline) {
				break
			}
			if b != nil {
				_ = b.Stop(ctx)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("bridge %d: %v", i+1, err)
		}
		bridges = append(bridges, b)
		t.Cleanup(func() { _ = b.Stop(context.Background()) })
	}

	nc := dial("publisher")
	js, _ := jetstream.New(nc)
	info, err := js.Stream(ctx, "WS_OUT")
	if err != nil {
		t.Fatal(err)
	}
	if r := info.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("WS_OUT has %d replicas, want 3", r)
	}
	c, err := subjects.NewClient(nc, "ws")
	if err != nil {
		t.Fatal(err)
	}

	const conns, perConn = 40, 50
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			for k := 0; k < conns; k++ {
				tok := subjects.Token(fmt.Sprintf("conn-%d", k))
				// Publishes during a node loss may need a retry; MsgID
				// makes a retried publish count once.
				for try := 0; ; try++ {
					err := c.Send(ctx, tok, []byte(fmt.Sprintf("m%d", i)), subjects.MsgID(fmt.Sprintf("%d-%d", k, i)))
					if err == nil {
						break
					}
					if try > 50 {
						t.Fatalf("publish %d/%d: %v", k, i, err)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}
	}
	publish(0, perConn/2)

	// Lose the node leading the outbound stream, and one bridge, while
	// messages are in flight.
	si, err := info.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := -1
	for i, s := range servers {
		if si.Cluster != nil && s.Name() == si.Cluster.Leader {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatalf("no leader of WS_OUT among the nodes (cluster info %+v)", si.Cluster)
	}
	t.Logf("stopping %s, the leader of WS_OUT", servers[leader].Name())
	servers[leader].Shutdown()
	if err := bridges[1].Stop(ctx); err != nil {
		t.Errorf("stopping bridge 2: %v", err)
	}
	publish(perConn/2, perConn)

	want := conns * perConn
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, dups := tg.distinct()
		if n == want {
			t.Logf("%d messages delivered over a 3-node cluster with 3 bridges, %d duplicates, after losing the stream leader and a bridge", n, dups)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivered %d distinct messages of %d (duplicates %d)", n, want, dups)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range tg.wentBack() {
		t.Errorf("went back: %s", w)
	}
	if err := bridges[0].Ready(); err != nil {
		t.Errorf("surviving bridge not ready: %v", err)
	}
}

// TestReplicatedConflictIsRecognised: a write conditional on a revision
// that lost, on a bucket with three replicas (which answers err_code 10164
// where one replica answers 10071), is recognised as a conflict, so that
// whoever made it reads the key again rather than giving up (a bridge's
// lease release and its commits, a registry delete).
func TestReplicatedConflictIsRecognised(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test starts three servers; skipped with -short")
	}
	servers := startCluster(t)
	nc, err := nats.Connect(urls(servers))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var kv jetstream.KeyValue
	for {
		// The meta leader may still be electing.
		if kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "CONFLICTS", Replicas: 3}); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("create a replicated bucket: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	// Conditional writes at one revision, at once: one wins; those the
	// leader had let through before the winner was applied are refused
	// when applied, with 10164.
	codes := map[int]int{}
	var mu sync.Mutex
	for round := 0; round < 20; round++ {
		rev, err := kv.Put(ctx, "k", []byte("base"))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if w%2 == 0 {
					_, err = kv.Update(ctx, "k", []byte{byte(w)}, rev)
				} else {
					err = kv.Delete(ctx, "k", jetstream.LastRevision(rev))
				}
				if err == nil {
					return
				}
				var apiErr *jetstream.APIError
				code := 0
				if errors.As(err, &apiErr) {
					code = int(apiErr.ErrorCode)
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
				if !subjects.IsWrongLastSequence(err) {
					t.Errorf("a conditional write that lost: %v, not recognised as a conflict", err)
				}
			}()
		}
		wg.Wait()
	}
	t.Logf("conflicts by err_code: %v", codes)
	if len(codes) == 0 {
		t.Error("no conditional write lost")
	}
}
