package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
)

// BenchmarkSuspendedSessions measures what 10,000 suspended sessions cost
// the gateway: each is opened by a real client (?resume=1), sent its pushes
// over the push address, and dropped without a close frame, as a network
// drop leaves it. Heap in use after a collection, before and after, per
// session; kept=10 also holds ten 100-byte pushes per session, so the cost
// of what a session keeps shows beside the session's own. Every op is
// 10,000 sessions.
//
//	go test -run '^$' -bench SuspendedSessions -benchtime 1x ./gateway
func BenchmarkSuspendedSessions(b *testing.B) {
	for _, kept := range []int{0, 10} {
		b.Run(fmt.Sprintf("kept=%d", kept), func(b *testing.B) {
			for range b.N {
				benchSuspended(b, 10000, kept)
			}
		})
	}
}

// leanFn accepts every connection and remembers only the last id, so the
// heap measured is the gateway's, not a recording function's.
type leanFn struct {
	mu   sync.Mutex
	last string
}

func (f *leanFn) Invoke(_ context.Context, payload []byte) ([]byte, error) {
	var ev subjects.GatewayEvent
	if err := json.Unmarshal(payload, &ev); err != nil || ev.WebSocket == nil {
		return nil, fmt.Errorf("bad event")
	}
	if ev.WebSocket.Action == subjects.ActionConnecting {
		f.mu.Lock()
		f.last = ev.WebSocket.SecConnectionID
		f.mu.Unlock()
	}
	return []byte(`{"errNo":0,"errMsg":"ok"}`), nil
}

func benchSuspended(b *testing.B, n, kept int) {
	fn := &leanFn{}
	g, err := New(Options{Register: fn, Transfer: fn, Cleanup: fn, MaxConnections: 2 * n, ResumeWindow: 10 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()
	defer g.Close()
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + DefaultWSPath + "?resume=1"
	payload := strings.Repeat("x", 100)
	ctx := context.Background()

	before := heapInUse()
	for i := range n {
		c, _, err := websocket.Dial(ctx, wsURL, nil)
		if err != nil {
			b.Fatalf("dial %d: %v", i, err)
		}
		_, data, err := c.Read(ctx) // the welcome
		if err != nil || data[0] != prefixControl {
			b.Fatalf("welcome %d: %q %v", i, data, err)
		}
		fn.mu.Lock()
		id := fn.last
		fn.mu.Unlock()
		for range kept {
			if st, body := pushDirect(g, id, payload); st != 200 {
				b.Fatalf("push: %d %s", st, body)
			}
		}
		_ = c.CloseNow()
	}
	waitFor(b, fmt.Sprintf("every session suspended (%d of %d)", g.sessSuspended.Load(), n), func() bool { return g.sessSuspended.Load() == int64(n) })
	after := heapInUse()
	per := float64(after-before) / float64(n)
	b.ReportMetric(per, "heap-bytes/session")
	b.ReportMetric(float64(g.sessBytes.Load())/float64(n), "kept-bytes/session")
	b.Logf("%d suspended sessions, %d pushes of %d bytes kept by each: heap in use %d -> %d bytes, %.0f bytes per session (%d bytes of it the frames' data)",
		n, kept, len(payload), before, after, per, g.sessBytes.Load()/int64(n))
}

// pushDirect hands one text push to the gateway's push handler in process.
func pushDirect(g *Gateway, id, s string) (int, string) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", DefaultPushPath, strings.NewReader(pushBody(subjects.ActionDataSend, id, subjects.DataText, s)))
	g.Handler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func heapInUse() uint64 {
	var m runtime.MemStats
	for range 2 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
