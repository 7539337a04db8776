package bridge

import (
	"errors"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/metrics"
)

func TestClassify(t *testing.T) {
	netErr := errors.New("connection refused")
	tests := []struct {
		name            string
		status, errNo   int
		transport, pars error
		want            Class
	}{
		{"ok", 200, 0, nil, nil, OK},
		{"errNo", 200, 1, nil, nil, Permanent},
		{"errNo 404 on 200", 200, 404, nil, nil, Permanent},
		{"200 not json", 200, 0, nil, errors.New("invalid character"), Permanent},
		{"400", 400, 0, nil, nil, Permanent},
		{"401", 401, 0, nil, nil, Permanent},
		{"403", 403, 0, nil, nil, Permanent},
		{"404", 404, 404, nil, nil, Gone},
		{"410", 410, 0, nil, nil, Gone},
		{"408", 408, 0, nil, nil, Transient},
		{"429", 429, 0, nil, nil, Transient},
		{"500", 500, 0, nil, nil, Transient},
		{"502", 502, 0, nil, nil, Transient},
		{"503", 503, 0, nil, nil, Transient},
		{"transport", 0, 0, netErr, nil, Transient},
		{"301", 301, 0, nil, nil, Permanent},
		{"204", 204, 0, nil, nil, Permanent},
	}
	for _, tt := range tests {
		got := Classify(tt.status, tt.errNo, tt.transport, tt.pars)
		if got.Class != tt.want {
			t.Errorf("%s: Classify(%d, %d) = %v, want %v", tt.name, tt.status, tt.errNo, got.Class, tt.want)
		}
		if (got.Err == nil) != (tt.want == OK) {
			t.Errorf("%s: Err = %v for class %v", tt.name, got.Err, got.Class)
		}
		if got.Status != tt.status {
			t.Errorf("%s: Status = %d, want %d", tt.name, got.Status, tt.status)
		}
	}
}

func TestDecide(t *testing.T) {
	p := Policy{MaxAttempts: 4, BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second}
	tests := []struct {
		name     string
		class    Class
		attempts int
		want     Decision
	}{
		{"ok first", OK, 1, Decision{Action: Ack}},
		{"ok last", OK, 4, Decision{Action: Ack}},
		{"transient 1", Transient, 1, Decision{Action: Retry, Delay: 100 * time.Millisecond}},
		{"transient 2", Transient, 2, Decision{Action: Retry, Delay: 200 * time.Millisecond}},
		{"transient 3", Transient, 3, Decision{Action: Retry, Delay: 400 * time.Millisecond}},
		{"transient used up", Transient, 4, Decision{Action: DeadLetter, Reason: metrics.ReasonRetries}},
		{"transient beyond", Transient, 9, Decision{Action: DeadLetter, Reason: metrics.ReasonRetries}},
		{"permanent", Permanent, 1, Decision{Action: DeadLetter, Reason: metrics.ReasonPermanent}},
		{"gone", Gone, 1, Decision{Action: DeadLetter, Reason: metrics.ReasonGone, Gone: true}},
		{"gone late", Gone, 3, Decision{Action: DeadLetter, Reason: metrics.ReasonGone, Gone: true}},
		{"unknown class", Class(42), 1, Decision{Action: DeadLetter, Reason: metrics.ReasonPermanent}},
		{"invalid", Invalid, 0, Decision{Action: DeadLetter, Reason: metrics.ReasonInvalid}},
		{"over-delivered", OverDelivered, 21, Decision{Action: DeadLetter, Reason: metrics.ReasonRetries}},
		{"abandoned", Abandoned, 2, Decision{Action: Release}},
	}
	for _, tt := range tests {
		got := Decide(Outcome{Class: tt.class}, tt.attempts, p, 0)
		if got != tt.want {
			t.Errorf("%s: Decide(%v, %d) = %+v, want %+v", tt.name, tt.class, tt.attempts, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	p := Policy{MaxAttempts: 100, BackoffBase: 100 * time.Millisecond, BackoffMax: 5 * time.Second, Jitter: 0.5}
	tests := []struct {
		attempts int
		u        float64
		want     time.Duration
	}{
		{0, 0, 100 * time.Millisecond},
		{1, 0, 100 * time.Millisecond},
		{1, 0.5, 75 * time.Millisecond},
		{4, 0, 800 * time.Millisecond},
		{7, 0, 5 * time.Second}, // capped
		{7, 0.5, 3750 * time.Millisecond},
		{2000, 0, 5 * time.Second}, // no overflow
		{3, -1, 400 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := p.Backoff(tt.attempts, tt.u); got != tt.want {
			t.Errorf("Backoff(%d, %v) = %v, want %v", tt.attempts, tt.u, got, tt.want)
		}
	}
	// Jitter never makes the delay negative or larger than the cap.
	for u := 0.0; u < 1; u += 0.01 {
		if d := p.Backoff(50, u); d <= 0 || d > p.BackoffMax {
			t.Fatalf("Backoff(50, %v) = %v out of (0, %v]", u, d, p.BackoffMax)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	p := Policy{MaxAttempts: 10, BackoffBase: 100 * time.Millisecond, BackoffMax: 30 * time.Second, Jitter: 0.2}
	o := Classify(503, 0, nil, nil)
	for i := 0; b.Loop(); i++ {
		_ = Decide(o, i%12+1, p, 0.3)
	}
}
