package bridge

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
