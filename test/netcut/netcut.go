// Package netcut is a TCP load balancer for tests that cut the network
// under WebSocket clients: it spreads new connections over backends round
// robin, and Cut drops every connection it carries at once, with no close
// frame and no FIN from the far side, as a phone that changes networks
// drops them.
package netcut

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Balancer forwards each TCP connection it accepts to one of its backends.
type Balancer struct {
	ln net.Listener

	mu       sync.Mutex
	backends []string
	next     int
	conns    map[net.Conn]bool
}

// New listens on a free loopback port; the balancer stops when the test
// ends.
func New(t testing.TB, backends ...string) *Balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Balancer{ln: ln, backends: backends, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { _ = ln.Close(); b.Cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.serve(c)
		}
	}()
	return b
}

// Addr is the balancer's host:port.
func (b *Balancer) Addr() string { return b.ln.Addr().String() }

// Set makes backends (host:port) the ones new connections go to; the
// connections it carries stay where they are.
func (b *Balancer) Set(backends ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = backends
}

// serve forwards c to the next backend that accepts a connection, trying
// each once, and closes c when none does.
func (b *Balancer) serve(c net.Conn) {
	b.mu.Lock()
	backends := append([]string(nil), b.backends...)
	start := b.next
	b.next++
	b.mu.Unlock()
	var up net.Conn
	for i := range backends {
		var err error
		up, err = net.DialTimeout("tcp", backends[(start+i)%len(backends)], 2*time.Second)
		if err == nil {
			break
		}
	}
	if up == nil {
		_ = c.Close()
		return
	}
	b.mu.Lock()
	b.conns[c], b.conns[up] = true, true
	b.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	_ = c.Close()
	_ = up.Close()
	b.mu.Lock()
	delete(b.conns, c)
	delete(b.conns, up)
	b.mu.Unlock()
}

// Cut drops every connection the balancer carries and returns how many
// client connections that was.
func (b *Balancer) Cut() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		_ = c.Close()
	}
	n := len(b.conns) / 2
	clear(b.conns)
	return n
}
