package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
)

// BenchmarkReaderBesideNonReaders measures how long a client that reads
// waits for each broadcast of 128 KiB beside 100 clients that never read,
// against beside no one and beside 100 clients that read, in one run. Each
// op is one broadcast, pushed over HTTP by 64 workers (the bridge's default
// concurrency) to every client, the measured reader last; the next starts
// when the reader has the previous one. A non-reader the gateway drops is
// replaced by a fresh one, so there are always about 100.
//
//	go test -run '^$' -bench ReaderBesideNonReaders -benchtime 60x ./gateway
func BenchmarkReaderBesideNonReaders(b *testing.B) {
	for _, tc := range []struct {
		name    string
		others  int
		reading bool
	}{{"alone", 0, false}, {"readers=100", 100, true}, {"non-readers=100", 100, false}} {
		b.Run(tc.name, func(b *testing.B) { benchReaderBeside(b, tc.others, tc.reading) })
	}
}

func benchReaderBeside(b *testing.B, others int, reading bool) {
	const workers, size = 64, 128 << 10
	fn := &fakeFn{}
	g, err := New(Options{Register: fn, Transfer: fn, Cleanup: fn, MaxMessageSize: size})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()
	defer g.Close()
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + DefaultWSPath

	var mu sync.Mutex // guards clients, targets and replaced
	var clients []*websocket.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range clients {
			_ = c.CloseNow()
		}
	}()
	var dialMu sync.Mutex // one dial at a time: its id is the latest register call's
	dial := func() (*websocket.Conn, string, error) {
		dialMu.Lock()
		defer dialMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		c, _, err := websocket.Dial(ctx, wsURL, nil)
		if err != nil {
			return nil, "", err
		}
		c.SetReadLimit(2 * size)
		mu.Lock()
		clients = append(clients, c)
		mu.Unlock()
		reg := fn.of(subjects.ActionConnecting)
		return c, reg[len(reg)-1].ws.SecConnectionID, nil
	}
	drain := func(c *websocket.Conn, each func([]byte)) {
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				return
			}
			each(data)
		}
	}

	reader, readerID, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan int, 1)
	go drain(reader, func(data []byte) {
		k, _, _ := strings.Cut(string(data[:16]), ":")
		n, _ := strconv.Atoi(k)
		got <- n
	})
	// targets[0] is the measured reader.
	targets := []string{readerID}
	for range others {
		c, id, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		if reading {
			go drain(c, func([]byte) {})
		}
		targets = append(targets, id)
	}
	replaced := 0
	replace := func(slot int) {
		_, id, err := dial()
		if err != nil {
			return
		}
		mu.Lock()
		targets[slot] = id
		replaced++
		mu.Unlock()
	}

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer hc.CloseIdleConnections()
	type job struct {
		slot int
		body string
	}
	jobs := make(chan job, 1024)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				resp, err := hc.Post(srv.URL+DefaultPushPath, "application/json", strings.NewReader(j.body))
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if j.slot > 0 && (resp.StatusCode == http.StatusGone || resp.StatusCode == http.StatusNotFound) {
					go replace(j.slot)
				}
			}
		}()
	}

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		data := strconv.Itoa(i) + ":"
		escaped, _ := json.Marshal(data + strings.Repeat("x", size-len(data)))
		mu.Lock()
		now := slices.Clone(targets)
		mu.Unlock()
		t0 := time.Now()
		go func() {
			for slot := len(now) - 1; slot >= 0; slot-- { // the reader last
				id, _ := json.Marshal(now[slot])
				jobs <- job{slot, `{"websocket":{"action":"data send","secConnectionID":` + string(id) +
					`,"dataType":"text","data":` + string(escaped) + `}}`}
			}
		}()
		select {
		case n := <-got:
			if n != i {
				b.Fatalf("reader got broadcast %d, want %d", n, i)
			}
		case <-time.After(5 * time.Minute):
			b.Fatalf("reader never got broadcast %d", i)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	close(jobs)
	wg.Wait()
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.ReportMetric(float64(q(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	mu.Lock()
	defer mu.Unlock()
	b.Logf("%d broadcasts of %d KiB beside %d others (reading: %v; %d replaced): reader waits p50 %v, p99 %v, max %v",
		b.N, size>>10, others, reading, replaced, q(0.50).Round(time.Millisecond), q(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
}
