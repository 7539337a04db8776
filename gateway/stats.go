package gateway

import "sync/atomic"

// Stats are the gateway's counters, for tests and the dev command. Counters
// only grow, except ConnectionsOpen.
type Stats struct {
	ConnectionsOpen     int64  // accepted and not yet cleaned up
	ConnectionsTotal    uint64 // accepted since start
	ConnectionsRejected uint64 // upgrades refused: errNo, failed register, limits
	FramesIn            uint64 // client frames handed to the transfer function
	FramesOut           uint64 // frames written to clients by pushes
	Invocations         uint64 // function invocations, every role
	InvokeErrors        uint64 // failed invocations, every role
	Cleanups            uint64 // cleanup invocations (one per accepted connection)
	PushesOK            uint64 // push answered 200
	PushesRepeated      uint64 // of PushesOK, not written: Ws-Seq at or below the connection's last
	PushesNotFound      uint64 // push to an unknown connection (404)
	PushesInvalid       uint64 // malformed push: 400, 405, 413
	PushesFailed        uint64 // push that failed: connection closed or send queue full (410), still registering (503)
	SendQueueBytes      int64  // queued for clients, not yet written
	Pings               uint64 // pings written to quiet connections
	PingsBehind         uint64 // of the pings, decided in a later tick than the first one at or after their due time
}

type counters struct {
	open, total, rejected                         atomic.Int64
	framesIn, framesOut                           atomic.Uint64
	invocations, invokeErrors, cleanups           atomic.Uint64
	pushOK, pushNotFound, pushInvalid, pushFailed atomic.Uint64
	pushRepeated                                  atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (g *Gateway) Stats() Stats {
	c := &g.stats
	return Stats{
		ConnectionsOpen:     c.open.Load(),
		ConnectionsTotal:    uint64(c.total.Load()),
		ConnectionsRejected: uint64(c.rejected.Load()),
		FramesIn:            c.framesIn.Load(),
		FramesOut:           c.framesOut.Load(),
		Invocations:         c.invocations.Load(),
		InvokeErrors:        c.invokeErrors.Load(),
		Cleanups:            c.cleanups.Load(),
		PushesOK:            c.pushOK.Load(),
		PushesRepeated:      c.pushRepeated.Load(),
		PushesNotFound:      c.pushNotFound.Load(),
		PushesInvalid:       c.pushInvalid.Load(),
		PushesFailed:        c.pushFailed.Load(),
		SendQueueBytes:      g.queuedBytes.Load(),
		Pings:               g.wheel.pings.Load(),
		PingsBehind:         g.wheel.behind.Load(),
	}
}
