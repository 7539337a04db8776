//go:build linux || darwin

package load

import "syscall"

// RaiseFileLimit makes room for need open files: the soft limit goes up to
// the hard one, and the hard one too when the process may (root). Load
// calls it; a benchmark holding the server side of many connections calls
// it too.
func RaiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if uint64(lim.Cur) >= need {
		return nil
	}
	want := lim
	want.Cur = max(uint64(lim.Cur), need)
	want.Max = max(uint64(lim.Max), want.Cur)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return nil
	}
	want.Cur, want.Max = lim.Max, lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return err
	}
	if uint64(want.Cur) < need {
		return syscall.EMFILE
	}
	return nil
}
