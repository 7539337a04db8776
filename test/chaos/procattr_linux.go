package main

import "syscall"

// procAttr makes a child die with the runner: a run that is killed leaves
// no NATS node, bridge or edge behind.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
