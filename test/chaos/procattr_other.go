//go:build !linux

package main

import "syscall"

// procAttr: without Linux's parent-death signal, a killed run's processes
// outlive it.
func procAttr() *syscall.SysProcAttr { return nil }
