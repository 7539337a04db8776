package functions_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
	"github.com/wsbridge/wsbridge/subjects"
)

// BenchmarkTransferRPC measures the transfer function as SCF runs it: a
// separate process invoked over net/rpc, each invocation a JetStream-acked
// publish into WS_IN on an embedded server. Beside it, a no-op function
// served the same way shows what the protocol alone costs; "ratio" is
// real/no-op. SCF gives one instance one invocation at a time, so clients=1
// is the realistic figure; clients=4 shows concurrent callers.
func BenchmarkTransferRPC(b *testing.B) {
	s := startNATS(b)
	observe(b, s, true)
	dir := buildFunctions(b, "transfer", "internal/noop")
	const callers = 4
	real := make([]*scfrpc.Client, callers)
	noop := make([]*scfrpc.Client, callers)
	realBin, noopBin := filepath.Join(dir, "transfer"), filepath.Join(dir, "noop")
	// One process each, several connections to it: concurrent callers of
	// one instance, not several instances.
	real[0] = startFunction(b, realBin, "WSBRIDGE_NATS_URL="+s.ClientURL())
	noop[0] = startFunction(b, noopBin)
	for i := 1; i < callers; i++ {
		real[i] = dialLike(b, real[0])
		noop[i] = dialLike(b, noop[0])
	}
	payload := []byte(dataEvent(connID, "text", "hello, wsbridge: a short chat message"))
	for _, clients := range []int{1, callers} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			noopRate := invokeRate(b, noop[:clients], payload)
			realRate := invokeRate(b, real[:clients], payload)
			b.ReportMetric(realRate, "real-inv/s")
			b.ReportMetric(noopRate, "noop-inv/s")
			b.ReportMetric(realRate/noopRate, "ratio")
			b.Logf("clients=%d n=%d: transfer %.0f inv/s, no-op %.0f inv/s, ratio %.2f", clients, b.N, realRate, noopRate, realRate/noopRate)
		})
	}
}

// dialLike opens another connection to the process c talks to.
func dialLike(b *testing.B, c *scfrpc.Client) *scfrpc.Client {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := scfrpc.Dial(ctx, c.Addr())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	return n
}

// invokeRate runs b.N invocations spread over the clients, each with its own
// request id (so JetStream stores every one), and returns invocations per
// second.
func invokeRate(b *testing.B, clients []*scfrpc.Client, payload []byte) float64 {
	b.Helper()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	start := time.Now()
	for i, c := range clients {
		n := b.N / len(clients)
		if i < b.N%len(clients) {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				_, err := c.InvokeID(ctx, payload, nuid.Next())
				cancel()
				if err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if first != nil {
		b.Fatalf("invoke: %v", first)
	}
	return float64(b.N) / elapsed.Seconds()
}

// BenchmarkTransferInProcess separates the handler's own cost from the
// process hops of BenchmarkTransferRPC: the transfer handler called
// in-process, beside a bare JetStream publish of the same message with the
// same headers; "ratio" is handler/bare.
func BenchmarkTransferInProcess(b *testing.B) {
	s := startNATS(b)
	obs := observe(b, s, true)
	f := newFunctions(b, s.ClientURL(), nil)
	payload := []byte(dataEvent(connID, "text", "hello, wsbridge: a short chat message"))
	subject := obs.names.Message(subjects.Token(connID))
	rate := func(call func(ctx context.Context) error) float64 {
		start := time.Now()
		for range b.N {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := call(ctx)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
		}
		return float64(b.N) / time.Since(start).Seconds()
	}
	bare := rate(func(ctx context.Context) error {
		m := nats.NewMsg(subject)
		m.Data = []byte("hello, wsbridge: a short chat message")
		m.Header.Set(subjects.HeaderConnID, connID)
		m.Header.Set(subjects.HeaderDataType, subjects.DataText)
		m.Header.Set(subjects.HeaderMsgID, nuid.Next())
		_, err := obs.js.PublishMsg(ctx, m)
		return err
	})
	handler := rate(func(ctx context.Context) error {
		_, err := f.Transfer(ctx, payload)
		return err
	})
	b.ReportMetric(handler, "handler-inv/s")
	b.ReportMetric(bare, "publish/s")
	b.ReportMetric(handler/bare, "ratio")
	b.Logf("n=%d: handler %.0f inv/s, bare JetStream publish %.0f/s, ratio %.2f", b.N, handler, bare, handler/bare)
}
