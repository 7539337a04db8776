package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
)

// countedJob is a job that fails while fail says so of its attempt (the
// round's attempts numbered from 1 as they start), counting them.
type countedJob struct {
	n        int
	fail     func(attempt int) bool
	attempts *atomic.Int64
}

func (j *countedJob) key() string     { return fmt.Sprint("job ", j.n) }
func (j *countedJob) what() string    { return retryDisconnect }
func (j *countedJob) size() int64     { return 0 }
func (j *countedJob) logAttrs() []any { return nil }
func (j *countedJob) run(context.Context) error {
	if j.fail(int(j.attempts.Add(1))) {
		return errors.New("NATS did not take it")
	}
	return nil
}

// A round goes on while NATS takes more than it fails (a mass disconnect
// while NATS is slow is worked through, not stopped at its first failure
// and paused), and stops soon when NATS takes nothing (an outage costs a
// bounded number of attempts per round, not one per connection).
func TestRetryRoundGoesOnWhileNATSTakesMost(t *testing.T) {
	fn := &fakeFn{}
	g, err := New(Options{Register: fn, Transfer: fn, Cleanup: fn})
	if err != nil {
		t.Fatal(err)
	}
	const jobs = 3000
	round := func(fail func(int) bool) (roundResult, int64, int) {
		q := newRetryQueue(g)
		var attempts atomic.Int64
		for n := range jobs {
			j := &countedJob{n: n, fail: fail, attempts: &attempts}
			q.jobs[j.key()] = &waiting{job: j}
		}
		res := q.round(context.Background())
		return res, attempts.Load(), q.pending()
	}

	// Every third attempt fails, in the order they start: which jobs
	// those are does not matter (the round takes them in map order), and
	// a failure never comes before the two successes ahead of it, so the
	// round sees NATS take twice what it fails however its attempts are
	// scheduled (failures drawn at random would, now and then, outnumber
	// the successes early in the round and stop it, as they should).
	res, attempts, left := round(func(attempt int) bool { return attempt%3 == 0 })
	if res != roundProgress || attempts != jobs || left != jobs/3 {
		t.Errorf("a third failing: round %v after %d attempts, %d left; want progress after %d attempts, %d left", res, attempts, left, jobs, jobs/3)
	}
	res, attempts, left = round(func(int) bool { return false })
	if res != roundDone || attempts != jobs || left != 0 {
		t.Errorf("none failing: round %v after %d attempts, %d left; want done after %d, none left", res, attempts, left, jobs)
	}
	res, attempts, left = round(func(int) bool { return true })
	if most := int64(retryStopAfter + 1 + retryConcurrency); res != roundFailed || attempts > most || left != jobs {
		t.Errorf("all failing: round %v after %d attempts, %d left; want failed after at most %d, all left", res, attempts, left, most)
	}
	t.Logf("all failing: the round stopped after %d attempts of %d", attempts, jobs)
}
