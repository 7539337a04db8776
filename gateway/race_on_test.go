//go:build race

package gateway

// raceOn: the race detector's cost grows with the goroutines alive, so
// tests holding thousands of connections hold fewer under it.
const raceOn = true
