package gateway

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes a function process get SIGKILL when the gateway
// dies, even by SIGKILL itself: no orphaned function keeps its port.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
