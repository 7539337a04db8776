package gateway

import (
	"context"
	"net/http"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// registerStatus is the HTTP status of an upgrade the register function
// answered with a non-zero errNo: a refusal (403) unless the errNo says the
// fault is the server's (500-599, as the functions answer when NATS or
// their configuration fails), which is answered as such, so the client
// tries again later instead of taking it for a verdict.
func registerStatus(errNo int) int {
	if errNo >= 500 && errNo <= 599 {
		return errNo
	}
	return http.StatusForbidden
}

// forgetFailed makes sure a registration that failed leaves no registry
// record, nor a connect event without its disconnect event. A register
// function that failed on NATS may have stored the record (and even the
// connect event, when only its acknowledgement was lost) before it failed,
// and could not delete it in the invocation's time. The end is a job of the
// retry queue: tried at once and again until NATS takes it, as the ends of
// accepted connections are (endJob).
func (g *Gateway) forgetFailed(id string) {
	g.retries.add(&endJob{g: g, id: id, reason: subjects.ReasonClient, at: time.Now()}, 0)
}

// endJob ends connection id on NATS: its registry record deleted and its
// one disconnect event stored. An edge instance does it itself
// (edge.conclude), which also finishes an end whose record an earlier
// attempt deleted without storing the event; the emulator invokes the
// cleanup function again.
type endJob struct {
	g      *Gateway
	id     string
	reason string    // the disconnect reason, when this instance is the one to announce it
	at     time.Time // when the connection ended
	// registered says the connection was stored (accepted after its
	// register, or listed in the registry); a failed registration may
	// never have been.
	registered bool
}

func (j *endJob) key() string     { return "end " + j.id }
func (j *endJob) what() string    { return retryDisconnect }
func (j *endJob) size() int64     { return 0 }
func (j *endJob) logAttrs() []any { return []any{"conn", j.id, "reason", j.reason} }

func (j *endJob) run(ctx context.Context) error {
	if j.g.edge != nil {
		return j.g.edge.conclude(ctx, j)
	}
	_, err := j.g.invoke(ctx, "cleanup", j.g.opts.Cleanup, newClosingEvent(j.id))
	return err
}

// endReason is the reason an edge instance announces a connection with
// when the cleanup function could not: what the function would have said.
// A close a backend asked for is also marked on the record, which Forget
// prefers while the record is there.
func endReason(why string) string {
	if why == discClosed {
		return subjects.ReasonClosed
	}
	return subjects.ReasonClient
}
