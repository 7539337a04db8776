package functions

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Sentinel errors of the handlers, matched with errors.Is. Each returned
// error wraps one of them and the underlying cause.
var (
	// ErrBadEvent reports a gateway event the handler cannot use: invalid
	// JSON, a missing connection id, bad base64, an unknown action or type.
	ErrBadEvent = errors.New("bad gateway event")
	// ErrTooLarge reports a client message over Options.MaxMessageSize.
	ErrTooLarge = errors.New("message too large")
	// ErrConfig reports invalid configuration.
	ErrConfig = errors.New("bad configuration")
	// ErrUnavailable reports that NATS could not be reached or did not answer
	// within the invocation's deadline.
	ErrUnavailable = errors.New("NATS unavailable")
	// ErrNotProvisioned reports that no stream captured a publish or the
	// registry bucket does not exist: the bridge has not provisioned them.
	ErrNotProvisioned = errors.New("stream or bucket not provisioned")
	// ErrNotStored reports any other failure to store an event.
	ErrNotStored = errors.New("event not stored")
	// ErrClosed reports an invocation after Close.
	ErrClosed = errors.New("functions closed")
)

// Registration reply errNo values: the seed's 101 and 102 for malformed
// events, the others after the HTTP status codes they resemble so that
// gateway logs read naturally.
const (
	CodeNoRequestContext = 101 // seed: "not found request context"
	CodeNoWebSocket      = 102 // seed: "not found websocket"
	CodeBadEvent         = 400
	CodeForbidden        = 403 // auth denied without its own errNo
	CodeInternal         = 500 // configuration, missing stream, other storage failures
	CodeUnavailable      = 503 // NATS unreachable or too slow
)

// storeError classifies a NATS failure of action (for example "publish
// ws.in.connect.T") under one of ErrUnavailable, ErrNotProvisioned or
// ErrNotStored, keeping the cause.
func storeError(action string, err error) error {
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, jetstream.ErrStreamNotFound),
		errors.Is(err, jetstream.ErrBucketNotFound),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled),
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w: %s: %w (the bridge creates the streams and bucket at start)", ErrNotProvisioned, action, err)
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrNoServers),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrConnectionDraining):
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, action, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrNotStored, action, err)
}

// errNo maps a handler error to the registration reply's errNo.
func errNo(err error) int {
	switch {
	case errors.Is(err, ErrBadEvent), errors.Is(err, ErrTooLarge):
		return CodeBadEvent
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrClosed):
		return CodeUnavailable
	}
	return CodeInternal
}
