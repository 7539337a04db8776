//go:build !(linux || darwin)

package load

// RaiseFileLimit is a no-op where there is no RLIMIT_NOFILE.
func RaiseFileLimit(uint64) error { return nil }
