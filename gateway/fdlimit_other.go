//go:build !(linux || darwin || freebsd)

package gateway

import (
	"errors"
	"os"
)

// fileLimit is unknown here: no clamp.
func fileLimit() (soft, hard uint64, raised bool, err error) {
	return 0, 0, false, errors.New("file descriptor limit unknown on this system")
}

func outOfFiles(error) bool { return false }

func openSpare() (*os.File, error) { return os.Open(os.DevNull) }
