//go:build !(linux || darwin)

package gateway

// raiseFileLimit is a no-op where there is no RLIMIT_NOFILE.
func raiseFileLimit(uint64) error { return nil }
