package gateway

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// What NATS has to take and could not take at once: the end of a
// connection (its registry record deleted and its one disconnect event,
// SPEC §6: "retried until it is taken, never dropped") and, from an edge
// instance, the dead letter of a frame it took for a client and never
// wrote. Each is a job in the gateway's retry queue, tried again in rounds
// until NATS takes it, for as long as the instance lives; when it stops,
// Close gives what is left the rest of ShutdownTimeout.
//
// The queue is also how an edge instance runs the cleanup of every
// connection that ends (endJob's first attempt invokes the cleanup
// function): at most retryConcurrency at a time, so 20,000 clients dropped
// at once by a balancer make 64 requests to NATS at a time, not 20,000
// that all time out together.
//
// A round hands out attempts while NATS takes more than it fails: once
// failures outnumber what it took (and are more than a few), the round
// stops, as in an outage NATS fails them all alike and a mass disconnect
// would otherwise cost one timeout per connection per round. A round that
// took something is followed by the next at once (after retryFirst, with
// jitter); one that took nothing by a pause that doubles from retryFirst to
// retryMost (with jitter), so that instances that lost NATS together do not
// all come back at the same instant. A round while the NATS connection is
// down tries nothing.

// Jobs, by what they hand NATS: the label of the retry metrics.
const (
	retryDisconnect = "disconnect"
	retryDeadLetter = "dead_letter"
)

// Why a job was given up: the label of retries_dropped_total.
const (
	dropFull    = "full"    // the queue was at its bound
	dropStopped = "stopped" // the gateway stopped with it still waiting
	dropRefused = "refused" // NATS refuses it for good (a dead letter it will never take)
)

const (
	// maxRetryJobs bounds the jobs waiting: ten times the default
	// connection limit, so a mass disconnect during an outage fits many
	// times over; at least twice the connection cap (retryQueue.maxJobs).
	maxRetryJobs = 100_000
	// maxRetryBytes bounds the frames held by dead letters waiting (each
	// was in a connection's send queue, bounded there, when it was dropped).
	maxRetryBytes = 256 << 20
	retryFirst    = 100 * time.Millisecond
	retryMost     = 5 * time.Second
	// retryDraining caps the pause between rounds while Close waits for
	// the queue.
	retryDraining = 500 * time.Millisecond
	// retryConcurrency bounds a round's attempts in flight.
	retryConcurrency = 64
	// retryStopAfter is how many failures a round takes before it weighs
	// them against what NATS took.
	retryStopAfter = 8
	// natsStepTimeout bounds one attempt, as it bounds a first one.
	natsStepTimeout = 5 * time.Second
)

// retryJob is one piece of work for NATS. run reports nil once NATS took it
// (or there turned out to be nothing to do). A job with a timeout method
// gets that for an attempt instead of natsStepTimeout.
type retryJob interface {
	key() string  // one job per key waits at a time
	what() string // retryDisconnect or retryDeadLetter
	size() int64  // bytes it holds, towards maxRetryBytes
	run(ctx context.Context) error
	logAttrs() []any
}

// giveUp is a job's error that retrying cannot cure: the job is given up
// (counted and logged), and the round goes on.
type giveUp struct{ err error }

func (e giveUp) Error() string { return e.err.Error() }
func (e giveUp) Unwrap() error { return e.err }

// retryQueue holds the jobs waiting and runs their rounds on a goroutine
// that starts with the first job and ends when Close has drained it.
type retryQueue struct {
	g *Gateway

	mu       sync.Mutex
	jobs     map[string]*waiting
	bytes    int64
	draining bool // Close is waiting for the queue; rounds come faster
	stopped  bool // the queue takes nothing more
	started  bool

	kick    chan struct{} // a job was added
	emptied chan struct{} // the queue became empty
	quit    chan struct{} // closed when Close is done waiting
	exited  chan struct{} // closed when the loop has returned

	dropLog rate.Sometimes // a full queue logs once in a while, not per job
	// tookLog spaces the lines saying NATS took what it had failed
	// (tookSince of them since the last line).
	tookLog   rate.Sometimes
	tookSince atomic.Int64
	// cleanupLog spaces the lines of failed cleanup invocations
	// (cleanupFails of them since the last line).
	cleanupLog   rate.Sometimes
	cleanupFails atomic.Int64
}

// waiting is a job in the queue.
type waiting struct {
	job   retryJob
	tries int // failed attempts so far
	since time.Time
}

func newRetryQueue(g *Gateway) *retryQueue {
	return &retryQueue{
		g: g, jobs: map[string]*waiting{},
		kick: make(chan struct{}, 1), emptied: make(chan struct{}, 1),
		quit: make(chan struct{}), exited: make(chan struct{}),
		dropLog: rate.Sometimes{Interval: 10 * time.Second},
		tookLog: rate.Sometimes{Interval: 10 * time.Second}, cleanupLog: rate.Sometimes{Interval: 10 * time.Second},
	}
}

// add queues j, after tries failed attempts (0: it was never tried). A job
// whose key is waiting already is that job. Past the queue's bounds, or
// once the gateway has stopped, j is dropped: counted and logged.
func (q *retryQueue) add(j retryJob, tries int) {
	q.mu.Lock()
	if _, ok := q.jobs[j.key()]; ok {
		q.mu.Unlock()
		return
	}
	if q.stopped {
		q.mu.Unlock()
		q.drop(j, dropStopped)
		q.dropLog.Do(func() {
			q.g.log.Warn("NATS did not take this and the gateway has stopped: given up (counted in retries_dropped_total)",
				append([]any{"what", j.what()}, j.logAttrs()...)...)
		})
		return
	}
	if len(q.jobs) >= q.maxJobs() || q.bytes+j.size() > maxRetryBytes {
		jobs, bytes := len(q.jobs), q.bytes
		q.mu.Unlock()
		q.drop(j, dropFull)
		q.dropLog.Do(func() {
			q.g.log.Warn("retry queue full: given up (counted in retries_dropped_total)", append([]any{"what", j.what(),
				"waiting", jobs, "waiting_bytes", bytes, "max_jobs", q.maxJobs(), "max_bytes", maxRetryBytes}, j.logAttrs()...)...)
		})
		return
	}
	q.jobs[j.key()] = &waiting{job: j, tries: tries, since: time.Now()}
	q.bytes += j.size()
	start := !q.started
	q.started = true
	q.mu.Unlock()
	q.g.m.retryPending.WithLabelValues(j.what()).Inc()
	if start {
		go q.loop()
	}
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// maxJobs bounds the jobs waiting: maxRetryJobs, or twice the connection
// cap when that is more, so that every connection's end fits even when all
// of them end at once.
func (q *retryQueue) maxJobs() int {
	return max(maxRetryJobs, 2*q.g.opts.MaxConnections)
}

func (q *retryQueue) drop(j retryJob, why string) {
	q.g.m.retryDropped.WithLabelValues(j.what(), why).Inc()
}

// remove takes a job that NATS took out of the queue.
func (q *retryQueue) remove(w *waiting) {
	q.mu.Lock()
	if q.jobs[w.job.key()] != w {
		q.mu.Unlock() // given up meanwhile: Close stopped waiting
		return
	}
	delete(q.jobs, w.job.key())
	q.bytes -= w.job.size()
	empty := len(q.jobs) == 0
	q.mu.Unlock()
	q.g.m.retryPending.WithLabelValues(w.job.what()).Dec()
	if empty {
		select {
		case q.emptied <- struct{}{}:
		default:
		}
	}
}

// pending reports how many jobs wait.
func (q *retryQueue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.jobs)
}

// loop runs rounds: at once when a job comes while the last round went
// well, else after a pause that doubles from retryFirst to retryMost with
// each failed round, with jitter, so that instances that lost NATS
// together do not all come back at the same instant.
func (q *retryQueue) loop() {
	defer close(q.exited)
	// Close's end of waiting cancels the attempts in flight.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-q.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTimer(time.Hour)
	t.Stop()
	fails := 0
	for {
		select {
		case <-q.quit:
			return
		case <-q.kick:
			if fails > 0 {
				continue // the next round, already timed, takes it
			}
		case <-t.C:
		}
		switch q.round(ctx) {
		case roundDone:
			fails = 0
			continue
		case roundProgress:
			// NATS takes some: the rest at once, once others had a turn.
			fails = 0
			t.Reset(retryFirst/2 + rand.N(retryFirst/2+1))
			continue
		}
		fails++
		pause := min(retryFirst<<min(fails-1, 10), retryMost)
		q.mu.Lock()
		if q.draining {
			pause = min(pause, retryDraining)
		}
		q.mu.Unlock()
		// Equal jitter: between half the pause and all of it.
		t.Reset(pause/2 + rand.N(pause/2+1))
	}
}

// What a round came to.
type roundResult int

const (
	roundDone     roundResult = iota // every job tried was taken
	roundProgress                    // some failed, some were taken
	roundFailed                      // nothing was taken
)

// round tries every waiting job once, up to retryConcurrency at a time.
// It stops handing out attempts once more than retryStopAfter failed and
// failures outnumber the jobs NATS took.
func (q *retryQueue) round(ctx context.Context) roundResult {
	q.mu.Lock()
	batch := make([]*waiting, 0, len(q.jobs))
	for _, w := range q.jobs {
		batch = append(batch, w)
	}
	q.mu.Unlock()
	if len(batch) == 0 {
		return roundDone
	}
	if nc := q.g.opts.NATS; nc != nil && !nc.IsConnected() {
		return roundFailed
	}
	var failed, took atomic.Int64
	var retried atomic.Int64
	sem := make(chan struct{}, retryConcurrency)
	var wg sync.WaitGroup
	for _, w := range batch {
		if f := failed.Load(); f > retryStopAfter && f > took.Load() || ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			q.mu.Lock()
			tries := w.tries
			q.mu.Unlock()
			if tries > 0 {
				q.g.m.retries.WithLabelValues(w.job.what()).Inc()
			}
			timeout := natsStepTimeout
			if tj, ok := w.job.(interface{ timeout() time.Duration }); ok {
				timeout = tj.timeout()
			}
			actx, acancel := context.WithTimeout(ctx, timeout)
			err := w.job.run(actx)
			acancel()
			if gu := (giveUp{}); errors.As(err, &gu) {
				took.Add(1)
				q.remove(w)
				q.drop(w.job, dropRefused)
				q.g.log.Error("NATS refuses this for good: given up (counted in retries_dropped_total)",
					append([]any{"what", w.job.what(), "err", gu.err}, w.job.logAttrs()...)...)
				return
			}
			if err != nil {
				q.mu.Lock()
				w.tries++
				tries = w.tries
				q.mu.Unlock()
				failed.Add(1)
				q.g.log.Debug("NATS did not take it; trying again", append([]any{"what", w.job.what(), "tries", tries, "err", err}, w.job.logAttrs()...)...)
				return
			}
			took.Add(1)
			q.remove(w)
			if tries > 0 {
				retried.Add(1)
				q.g.log.Debug("NATS took it after retries", append([]any{"what", w.job.what(), "tries", tries + 1,
					"waited", time.Since(w.since).Round(time.Millisecond)}, w.job.logAttrs()...)...)
			}
		}()
	}
	wg.Wait()
	if n := retried.Load(); n > 0 {
		q.tookSince.Add(n)
		q.tookLog.Do(func() {
			q.g.log.Info("NATS took what it had refused before", "jobs", q.tookSince.Swap(0), "still_waiting", q.pending())
		})
	}
	switch {
	case failed.Load() == 0:
		return roundDone
	case took.Load() > 0:
		return roundProgress
	}
	return roundFailed
}

// drain gives the jobs waiting until deadline to be taken, then stops the
// queue: what is left is counted and logged as given up, and later jobs
// are given up at once.
func (q *retryQueue) drain(deadline time.Time) {
	q.mu.Lock()
	q.draining = true
	started := q.started
	q.mu.Unlock()
	if started {
		select {
		case q.kick <- struct{}{}:
		default:
		}
		t := time.NewTimer(time.Until(deadline))
	wait:
		for q.pending() > 0 {
			select {
			case <-q.emptied:
			case <-t.C:
				break wait
			}
		}
		t.Stop()
	}
	q.mu.Lock()
	q.stopped = true
	started = q.started
	left := q.jobs
	q.jobs = map[string]*waiting{}
	q.bytes = 0
	q.mu.Unlock()
	close(q.quit)
	if started {
		<-q.exited
	}
	byWhat := map[string]int{}
	for _, w := range left {
		q.g.m.retryPending.WithLabelValues(w.job.what()).Dec()
		q.drop(w.job, dropStopped)
		byWhat[w.job.what()]++
	}
	for what, n := range byWhat {
		q.g.log.Warn("stopping with work NATS has not taken: given up (counted in retries_dropped_total)", "what", what, "jobs", n)
	}
}
