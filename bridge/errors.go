package bridge

import (
	"errors"

	"github.com/wsbridge/wsbridge/subjects"
)

// Errors of the bridge, matched with errors.Is.
var (
	// ErrNoConn is returned by New without Deps.Conn.
	ErrNoConn = errors.New("bridge: a NATS connection is required")
	// ErrAlreadyStarted is returned by a second Start.
	ErrAlreadyStarted = errors.New("bridge already started")
	// ErrStopped is returned by Start on a bridge that was stopped.
	ErrStopped = errors.New("bridge stopped")
	// ErrNATSClosed is returned by Run when the NATS connection closed for
	// good: nothing can bring it back, so the process should exit and be
	// restarted by its supervisor.
	ErrNATSClosed = errors.New("nats connection closed for good")
)

// Errors the bridge decides on inside, never returned to a caller.
var (
	// errNotFound is the API's answer for an unknown token (the client
	// matches it as subjects.ErrNotFound).
	errNotFound = subjects.ErrNotFound
	// errBadAnswer reports a 200 whose body is not the gateway's JSON answer.
	errBadAnswer = errors.New("gateway answered 200 without a JSON errNo")
	// errInstanceLost reports a push for a connection whose self-hosted edge
	// instance (`wsbridge gateway`) is no longer live: the connection is
	// gone, announced with reason lost (as the surviving instances announce
	// it).
	errInstanceLost = errors.New("gateway instance is not live")
)
