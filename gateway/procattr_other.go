//go:build !linux

package gateway

import "os/exec"

// dieWithParent is Linux's Pdeathsig; elsewhere a function process outlives
// a gateway killed without a chance to stop it.
func dieWithParent(*exec.Cmd) {}
