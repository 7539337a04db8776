package subjects_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestProvisionBoundsInAndDLQ floods WS_IN and WS_DLQ past their byte
// bounds: every publish is taken (the oldest make room), and neither stream
// holds more than its bound. A stream an earlier release created without a
// bound gets one in place.
func TestProvisionBoundsInAndDLQ(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := subjects.MustNew("ws")

	// The defaults first, as an earlier release left WS_IN: unbounded.
	old := n.StreamConfigs(subjects.StreamOptions{})[0]
	old.MaxBytes, old.Discard = -1, jetstream.DiscardNew
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatalf("create unbounded %s: %v", old.Name, err)
	}
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{}); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	for name, want := range map[string]int64{"WS_IN": subjects.DefaultInMaxBytes, "WS_DLQ": subjects.DefaultDLQMaxBytes, "WS_OUT": subjects.DefaultOutMaxBytes} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		cfg := st.CachedInfo().Config
		if cfg.MaxBytes != want {
			t.Errorf("%s max bytes %d, want the default %d", name, cfg.MaxBytes, want)
		}
		wantDiscard := jetstream.DiscardOld
		if name == "WS_OUT" {
			wantDiscard = jetstream.DiscardNew
		}
		if cfg.Discard != wantDiscard {
			t.Errorf("%s discard %v, want %v", name, cfg.Discard, wantDiscard)
		}
	}

	const inMax, dlqMax = 64 << 10, 32 << 10
	if err := subjects.Provision(ctx, js, n, subjects.StreamOptions{InMaxBytes: inMax, DLQMaxBytes: dlqMax}); err != nil {
		t.Fatalf("Provision with small bounds: %v", err)
	}
	body := []byte(strings.Repeat("x", 1024))
	for i := 0; i < 400; i++ {
		tok := subjects.Token(fmt.Sprintf("conn-%d", i))
		if _, err := js.Publish(ctx, n.Message(tok), body); err != nil {
			t.Fatalf("publish inbound event %d past the bound: %v (a full WS_IN must make room, not refuse)", i, err)
		}
		if _, err := js.Publish(ctx, n.DeadLetter(subjects.KindSend, tok), body); err != nil {
			t.Fatalf("publish dead letter %d past the bound: %v (a full WS_DLQ must make room, not refuse)", i, err)
		}
	}
	for name, limit := range map[string]uint64{"WS_IN": inMax, "WS_DLQ": dlqMax} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatalf("stream %s info: %v", name, err)
		}
		t.Logf("%s after 400 KiB published: %d bytes in %d messages (bound %d), first sequence %d", name, info.State.Bytes, info.State.Msgs, limit, info.State.FirstSeq)
		if info.State.Bytes > limit {
			t.Errorf("%s holds %d bytes, past its bound of %d", name, info.State.Bytes, limit)
		}
		if info.State.FirstSeq == 1 {
			t.Errorf("%s still holds its first message: nothing was dropped to make room", name)
		}
		if info.State.LastSeq != 400 {
			t.Errorf("%s last sequence %d, want 400: every publish stored", name, info.State.LastSeq)
		}
	}
}

// TestProvisionSaysWhenBoundsDoNotFit provisions on a server whose store
// is smaller than the streams' bounds: the error names the flags.
func TestProvisionSaysWhenBoundsDoNotFit(t *testing.T) {
	s := natstest.Start(t, func(o *server.Options) { o.JetStreamMaxStore = 64 << 20 })
	nc := connect(t, s)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := subjects.Provision(ctx, js, subjects.MustNew("ws"), subjects.StreamOptions{})
	if err == nil || !strings.Contains(err.Error(), "--in-max-bytes") || !strings.Contains(err.Error(), "max_file_store") {
		t.Fatalf("Provision of 2.25 GiB of bounds on a 64 MiB store: %v, want an error naming the flags and max_file_store", err)
	}
	t.Logf("refusal: %v", err)
	if err := subjects.Provision(ctx, js, subjects.MustNew("ws"), subjects.StreamOptions{OutMaxBytes: 16 << 20, InMaxBytes: 16 << 20, DLQMaxBytes: 8 << 20}); err != nil {
		t.Fatalf("Provision of bounds that fit: %v", err)
	}
}
