package bridge

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// countHandler counts the log records whose message starts with prefix.
type countHandler struct {
	prefix string
	n      *atomic.Int64
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.prefix) {
		h.n.Add(1)
	}
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// While the dead letter of a message cannot be published, later
// messages to the same connection wait for it.
func TestDeadLetterFailureKeepsOrder(t *testing.T) {
	tok := subjects.Token("dl-order")
	var e *env
	var secondPushed, secondAfterDL atomic.Bool
	e = newEnv(t, func(p push, attempt int) (int, int) {
		if p.ConnID != "dl-order" {
			return http.StatusOK, 0
		}
		switch p.Data {
		case "first":
			return http.StatusBadRequest, 0
		case "second":
			if !secondPushed.Swap(true) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				st, err := e.js.Stream(ctx, e.names.StreamDLQ())
				if err == nil {
					_, err = st.GetLastMsgForSubject(ctx, e.names.DeadLetter(subjects.KindSend, tok))
				}
				secondAfterDL.Store(err == nil)
			}
		}
		return http.StatusOK, 0
	})
	var failures atomic.Int64
	e.startLogged(slog.New(countHandler{prefix: "dead letter failed", n: &failures}), nil)
	if err := e.js.DeleteStream(context.Background(), e.names.StreamDLQ()); err != nil {
		t.Fatal(err)
	}
	e.publish(e.names.Send(tok), []byte("first"))
	waitFor(t, "a failed dead letter", 20*time.Second, func() bool { return failures.Load() >= 1 })
	e.publish(e.names.Send(tok), []byte("second"))
	e.publish(e.names.Send(tok), []byte("third"))
	// Give the later messages several backoff rounds to overtake.
	waitFor(t, "more failed dead letters", 20*time.Second, func() bool { return failures.Load() >= 5 })
	if err := subjects.Provision(context.Background(), e.js, e.names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two pushes", 20*time.Second, func() bool { return len(e.tg.of("dl-order")) >= 2 })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	if !secondAfterDL.Load() {
		t.Error("second message pushed before the first one's dead letter was stored")
	}
	var got []string
	for _, p := range e.tg.of("dl-order") {
		got = append(got, p.Data)
	}
	if strings.Join(got, ",") != "second,third" {
		t.Errorf("pushes %v, want second,third", got)
	}
	st, err := e.js.Stream(context.Background(), e.names.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), e.names.DeadLetter(subjects.KindSend, tok))
	if err != nil || string(m.Data) != "first" {
		t.Errorf("dead letter: %v %v", m, err)
	}
}

// TestDeadLetterKeepsBodyOfConditionalPublish: a command published with
// Nats-Expected-Stream (a condition WS_OUT met) is dead-lettered with its
// body. Copied as it was, the header made WS_DLQ refuse the dead letter
// ("expected stream does not match") and only the metadata was stored.
// The header is kept under Ws-Orig-, as is the original Nats-Msg-Id.
func TestDeadLetterKeepsBodyOfConditionalPublish(t *testing.T) {
	e := newEnv(t, func(p push, attempt int) (int, int) { return http.StatusBadRequest, 0 })
	e.start(nil)
	tok := subjects.Token("dl-expected")
	e.publish(e.names.Send(tok), []byte("the body"),
		"Nats-Expected-Stream", e.names.StreamOut(), "Nats-Msg-Id", "cmd-1", "X-Trace", "abc")
	st, err := e.js.Stream(context.Background(), e.names.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	var dl *jetstream.RawStreamMsg
	waitFor(t, "the dead letter", 20*time.Second, func() bool {
		dl, err = st.GetLastMsgForSubject(context.Background(), e.names.DeadLetter(subjects.KindSend, tok))
		return err == nil
	})
	if string(dl.Data) != "the body" {
		t.Errorf("dead letter body %q, want the command's body", dl.Data)
	}
	for k, want := range map[string]string{
		"Ws-Reason":                    "permanent",
		"Ws-Orig-Nats-Expected-Stream": e.names.StreamOut(),
		"Ws-Orig-Nats-Msg-Id":          "cmd-1",
		"X-Trace":                      "abc",
		"Nats-Expected-Stream":         "",
		subjects.HeaderTruncated:       "",
	} {
		if got := dl.Header.Get(k); got != want {
			t.Errorf("dead letter header %s = %q, want %q", k, got, want)
		}
	}
}

// TestDeadLetterHeaders: every header by which JetStream takes a publish
// differently (conditions, rollups, TTLs, counters, batches, schedules,
// API levels, tracing) is renamed in a dead letter, so WS_DLQ stores each
// dead letter whole, whatever the command carried; others stay as they are.
func TestDeadLetterHeaders(t *testing.T) {
	s := startNATS(t)
	js, err := jetstream.New(connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew("ws")
	ctx := context.Background()
	if err := subjects.Provision(ctx, js, names, subjects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	special := map[string]string{
		"Nats-Expected-Stream":                        "WS_OUT",
		"Nats-Expected-Last-Sequence":                 "7",
		"Nats-Expected-Last-Subject-Sequence":         "7",
		"Nats-Expected-Last-Subject-Sequence-Subject": "ws.out.send.x",
		"Nats-Expected-Last-Msg-Id":                   "nope",
		"Nats-Rollup":                                 "all",
		"Nats-TTL":                                    "1s",
		"Nats-Marker-Reason":                          "MaxAge",
		"Nats-Incr":                                   "1",
		"Nats-Counter-Sources":                        "{}",
		"Nats-Batch-Id":                               "b1",
		"Nats-Batch-Sequence":                         "1",
		"Nats-Batch-Commit":                           "1",
		"Nats-Schedule":                               "@every 1s",
		"Nats-Schedule-TTL":                           "1s",
		"Nats-Schedule-Target":                        "ws.dlq.send.x",
		"Nats-Required-Api-Level":                     "1000",
		"Nats-Trace-Only":                             "true",
		"nats-expected-stream":                        "WS_OUT", // the server matches the exact case; any case is renamed
	}
	for k, v := range special {
		orig := nats.Header{k: {v}, "X-Keep": {"yes"}}
		subj := names.DeadLetter(subjects.KindSend, subjects.Token("dl-"+strings.ToLower(k)))
		h := deadLetterHeaders(orig)
		if _, ok := h[k]; ok {
			t.Errorf("%s kept in the dead letter", k)
		}
		if got := h.Get(HeaderOrigPrefix + k); got != v {
			t.Errorf("%s not kept as %s%s: %v", k, HeaderOrigPrefix, k, h)
		}
		if h.Get("X-Keep") != "yes" {
			t.Errorf("with %s: X-Keep lost: %v", k, h)
		}
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte("body"), Header: h}); err != nil {
			t.Errorf("dead letter of a command with %s refused: %v", k, err)
			continue
		}
		st, err := js.Stream(ctx, names.StreamDLQ())
		if err != nil {
			t.Fatal(err)
		}
		m, err := st.GetLastMsgForSubject(ctx, subj)
		if err != nil || string(m.Data) != "body" {
			t.Errorf("dead letter of a command with %s: %v, %v; want it stored with its body", k, m, err)
		}
	}
}
