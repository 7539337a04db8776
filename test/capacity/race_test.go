//go:build race

package capacity

// raceEnabled: the race detector slows this process (the embedded NATS and
// the client processes, which are this binary) several times over.
const raceEnabled = true
