package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
//
// An invocation that timed out may still have its writes on the way: a put
// sent just before the deadline is stored after the first attempt found
// nothing to delete (and a function binary may still be running). So the
// end is tried once more when those have settled (settleFailed after the
// invocation's timeout): a record stored late is deleted then, and its
// connect event, if stored, gets its disconnect event.
func (g *Gateway) forgetFailed(id string) {
	g.retries.add(&endJob{g: g, id: id, reason: subjects.ReasonClient, at: time.Now()}, 0)
	if g.edge == nil {
		return // the emulator invokes cleanup once, as API Gateway does
	}
	time.AfterFunc(g.opts.FunctionTimeout+settleFailed, func() {
		if !g.isClosed() {
			g.retries.add(&endJob{g: g, id: id, reason: subjects.ReasonClient, at: time.Now()}, 0)
		}
	})
}

// settleFailed is how long after a failed register invocation's deadline
// its writes are taken to have landed, or never to land.
const settleFailed = 5 * time.Second

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
	// registered says the connection was stored and announced (accepted
	// after its register, listed in the registry, or a failed
	// registration whose connect event was found); a failed registration
	// may never have been, and forgetUnannounced decides.
	registered bool
	// invoke says the next attempt is the connection's cleanup
	// invocation (ended): the first of an accepted connection's end.
	// Attempts after a failed one end it on NATS directly.
	invoke bool
}

func (j *endJob) key() string     { return "end " + j.id }
func (j *endJob) what() string    { return retryDisconnect }
func (j *endJob) size() int64     { return 0 }
func (j *endJob) logAttrs() []any { return []any{"conn", j.id, "reason", j.reason} }

func (j *endJob) run(ctx context.Context) error {
	if j.invoke {
		j.invoke = false // one invocation; retries, if any, are the edge's own
		return j.g.invokeCleanup(ctx, j.id)
	}
	if j.g.edge != nil {
		if !j.registered {
			return j.g.edge.forgetUnannounced(ctx, j)
		}
		return j.g.edge.conclude(ctx, j)
	}
	_, err := j.g.invoke(ctx, "cleanup", j.g.opts.Cleanup, newClosingEvent(j.id))
	return err
}

// timeout bounds an attempt: the function timeout for the cleanup
// invocation, natsStepTimeout for the ends retried.
func (j *endJob) timeout() time.Duration {
	if j.invoke {
		return j.g.opts.FunctionTimeout
	}
	return natsStepTimeout
}

// ended runs the end of an accepted connection that this instance does not
// announce itself: the cleanup function, as API Gateway invokes it. An edge
// instance queues it (endJob, invoke set): at most retryConcurrency
// cleanups run at once, however many clients leave together, and one NATS
// failed is retried until it is taken (SPEC §6). The emulator invokes
// cleanup at once, once, as API Gateway does.
func (g *Gateway) ended(id, why string, at time.Time) {
	if g.edge == nil {
		g.cleanup(id)
		return
	}
	g.retries.add(&endJob{g: g, id: id, reason: endReason(why), at: at, registered: true, invoke: true}, 0)
}

// invokeCleanup is ended's invocation of the cleanup function. A failure
// is logged at warn once in a while (a mass drop whose cleanups NATS is too
// slow for would log one per connection), with how many failed since.
func (g *Gateway) invokeCleanup(ctx context.Context, id string) error {
	defer g.stats.cleanups.Add(1)
	_, err := g.invoke(ctx, "cleanup", g.opts.Cleanup, newClosingEvent(id))
	if err != nil {
		g.retries.cleanupFails.Add(1)
		g.retries.cleanupLog.Do(func() {
			g.log.Warn("cleanup failed; retrying the end until NATS takes it", "conn", id, "err", err,
				"failed_since_last_line", g.retries.cleanupFails.Swap(0))
		})
	}
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

// forgetUnannounced ends a failed registration: one whose connect event was
// stored is ended like any connection (conclude: its record deleted, its
// one disconnect event); one whose connect event was not has its record,
// if the function stored one, deleted without an event, since no backend
// heard of it. A connect event stored later still is found by the second
// attempt forgetFailed makes.
func (e *edge) forgetUnannounced(ctx context.Context, j *endJob) error {
	token := subjects.Token(j.id)
	in, err := e.inbound(ctx)
	if err != nil {
		return err
	}
	switch _, err := in.GetLastMsgForSubject(ctx, e.names.Connect(token)); {
	case err == nil:
		// Announced: ended like any connection, now and on every retry.
		j.registered = true
		return e.conclude(ctx, j)
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return fmt.Errorf("connect event of %s: %w", token, err)
	}
	reg, err := e.registryKV(ctx)
	if reg == nil {
		return err
	}
	if _, err := reg.Get(ctx, token); errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	} else if err != nil {
		return fmt.Errorf("registry get %s: %w", token, err)
	}
	if err := reg.Delete(ctx, token); err != nil {
		return fmt.Errorf("registry delete %s: %w", token, err)
	}
	e.log.Debug("registry record of a failed registration deleted", "token", token)
	return nil
}
