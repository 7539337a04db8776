package main

import (
	"net"

	"github.com/wsbridge/wsbridge/gateway"
)

// listenAddr is a listen address and the flag that sets it.
type listenAddr struct{ flag, addr string }

// checkListen tries every address at once, before anything starts, and
// fails naming the address and the flag (and its environment variable) that
// changes it: a second `wsbridge dev` otherwise waited out the embedded
// server's start timeout and reported something else. Empty addresses are
// off and skipped.
func checkListen(addrs ...listenAddr) error {
	for _, a := range addrs {
		if a.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return gateway.ListenError(a.flag, a.addr, err)
		}
		ln.Close()
	}
	return nil
}
