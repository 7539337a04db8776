//go:build !(linux || darwin)

package gateway

// RaiseFileLimit is a no-op where there is no RLIMIT_NOFILE.
func RaiseFileLimit(uint64) error { return nil }
