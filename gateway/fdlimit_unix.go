//go:build linux || darwin || freebsd

package gateway

import (
	"errors"
	"os"
	"syscall"
)

// fileLimit raises the soft RLIMIT_NOFILE to the hard one (as most servers
// do; the Go runtime does the same at start on some systems) and returns
// both, and whether this call raised it.
func fileLimit() (soft, hard uint64, raised bool, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, false, err
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			lim, raised = want, true
		}
	}
	return uint64(lim.Cur), uint64(lim.Max), raised, nil
}

// outOfFiles reports an accept that failed for want of a file descriptor,
// the process's (EMFILE) or the system's (ENFILE).
func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// openSpare opens a file descriptor held in reserve.
func openSpare() (*os.File, error) { return os.Open(os.DevNull) }
