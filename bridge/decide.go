package bridge

import (
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/wsbridge/wsbridge/metrics"
)

// Class is the classification of one push attempt (SPEC §1).
type Class int

// Push classes.
const (
	// OK is HTTP 200 with errNo 0.
	OK Class = iota
	// Transient is 408, 429, 5xx, a timeout or a transport error: try again.
	Transient
	// Permanent is a 200 with a non-zero errNo, or another 4xx: trying again
	// gives the same answer.
	Permanent
	// Gone is 404 or 410: the connection no longer exists.
	Gone

	// Outcomes that are not a gateway answer, decided in the same place.

	// Invalid: the message cannot be pushed at all (bad subject or token,
	// unknown data type, text that is not UTF-8, a limit exceeded).
	Invalid
	// OverDelivered: JetStream delivered the message MaxDeliver times
	// without an outcome (bridges kept dying on it).
	OverDelivered
	// Abandoned: not pushed because the partition was handed off or the
	// bridge stopped; the message is for the partition's next owner.
	Abandoned
)

func (c Class) String() string {
	switch c {
	case OK:
		return metrics.ResultOK
	case Transient:
		return metrics.ResultTransient
	case Permanent:
		return metrics.ResultPermanent
	case Gone:
		return metrics.ResultGone
	case Invalid:
		return "invalid"
	case OverDelivered:
		return "over-delivered"
	case Abandoned:
		return "abandoned"
	}
	return fmt.Sprintf("class(%d)", int(c))
}

// Outcome is the result of one push attempt.
type Outcome struct {
	Class  Class
	Status int   // HTTP status, 0 when no answer was received
	ErrNo  int   // the gateway's errNo, when its answer parsed
	Err    error // why the push did not succeed; nil for OK
}

// Classify maps an HTTP status, the parsed errNo of a 200 answer and a
// transport error to an Outcome. parseErr is the error of decoding a 200
// answer's body (nil when it decoded).
func Classify(status, errNo int, transportErr, parseErr error) Outcome {
	o := Outcome{Status: status, ErrNo: errNo}
	switch {
	case transportErr != nil:
		o.Class, o.Err = Transient, transportErr
	case status == http.StatusOK && parseErr != nil:
		// Not the documented answer: retrying will not make it one, and a
		// dead letter makes the misconfiguration visible.
		o.Class, o.Err = Permanent, fmt.Errorf("%w: %v", errBadAnswer, parseErr)
	case status == http.StatusOK && errNo == 0:
		o.Class = OK
	case status == http.StatusOK:
		o.Class, o.Err = Permanent, fmt.Errorf("gateway errNo %d", errNo)
	case status == http.StatusNotFound || status == http.StatusGone:
		o.Class, o.Err = Gone, fmt.Errorf("gateway HTTP %d: connection gone", status)
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		o.Class, o.Err = Transient, fmt.Errorf("gateway HTTP %d", status)
	default:
		// Other 4xx, and 1xx/2xx/3xx that are not the documented 200.
		o.Class, o.Err = Permanent, fmt.Errorf("gateway HTTP %d", status)
	}
	return o
}

// Action is what the bridge does with a message after a push attempt.
type Action int

// Actions.
const (
	// Ack: delivered.
	Ack Action = iota
	// Retry after Decision.Delay. The bridge retries in process, inside
	// the connection's lane, so later messages to the same connection wait
	// (see lanes.go); it falls back to JetStream's NakWithDelay with the same
	// delay only when it stops before the retry.
	Retry
	// DeadLetter: republish to the dead-letter stream, then ack.
	DeadLetter
	// Release: hand the message back to JetStream (NAK after Delay, in
	// stream order at a hand-off) for the partition's next owner.
	Release
)

func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead-letter"
	case Release:
		return "release"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Decision is the ack/retry/dead-letter choice for one push attempt.
type Decision struct {
	Action Action
	Delay  time.Duration // for Retry
	Reason string        // dead-letter reason (metrics.Reason*), for DeadLetter
	Gone   bool          // the connection is gone: delete it and publish a disconnect
}

// Policy bounds retries.
type Policy struct {
	MaxAttempts int           // push attempts before a transient failure is dead-lettered
	BackoffBase time.Duration // delay after the first failure
	BackoffMax  time.Duration // cap of the exponential delay
	Jitter      float64       // fraction of the delay taken off at random, 0..1
}

// Backoff is the delay after attempt number attempts (1-based) failed:
// BackoffBase·2^(attempts-1), capped at BackoffMax, minus up to Jitter of it
// chosen by u in [0,1). Jitter spreads the retries of a burst of failures
// (a gateway restart fails thousands of pushes at once) over time.
func (p Policy) Backoff(attempts int, u float64) time.Duration {
	if attempts < 1 {
		attempts = 1
	}
	d := float64(p.BackoffBase) * math.Pow(2, float64(attempts-1))
	if d > float64(p.BackoffMax) || math.IsInf(d, 0) {
		d = float64(p.BackoffMax)
	}
	if u < 0 {
		u = 0
	}
	if u >= 1 {
		u = 0.999999
	}
	d -= d * p.Jitter * u
	return time.Duration(d)
}

// Decide is the bridge's single ack/retry/dead-letter decision: o is the
// outcome of attempt number attempts (1-based) of one push, or of a message
// that was not pushed (Invalid, OverDelivered, Abandoned); u a uniform
// random number in [0,1) for the jitter (a parameter so the function is pure).
func Decide(o Outcome, attempts int, p Policy, u float64) Decision {
	switch o.Class {
	case Invalid:
		return Decision{Action: DeadLetter, Reason: metrics.ReasonInvalid}
	case OverDelivered:
		return Decision{Action: DeadLetter, Reason: metrics.ReasonRetries}
	case Abandoned:
		return Decision{Action: Release}
	case OK:
		return Decision{Action: Ack}
	case Gone:
		return Decision{Action: DeadLetter, Reason: metrics.ReasonGone, Gone: true}
	case Permanent:
		return Decision{Action: DeadLetter, Reason: metrics.ReasonPermanent}
	case Transient:
		if attempts >= p.MaxAttempts {
			return Decision{Action: DeadLetter, Reason: metrics.ReasonRetries}
		}
		return Decision{Action: Retry, Delay: p.Backoff(attempts, u)}
	}
	// An unknown class is a bug; dead-lettering keeps the message visible.
	return Decision{Action: DeadLetter, Reason: metrics.ReasonPermanent}
}
