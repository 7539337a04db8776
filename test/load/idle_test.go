package load

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// TestIdleConnections runs the wsbridge binary with idle connections from
// client processes (Idle) and prints what they cost and how the gateway
// pinged them. By default it holds 300 connections pinged every second, to
// keep the harness working; with WSBRIDGE_LOAD_IDLE=1 it holds 19,000
// (WSBRIDGE_LOAD_IDLE_CONNS changes that) with --ping-interval 10s and
// requires every one of them pinged twice within 35 s:
//
//	WSBRIDGE_LOAD_IDLE=1 go test -run '^TestIdleConnections$' -v -timeout 20m ./test/load/
//
// WSBRIDGE_LOAD_BINARY runs a wsbridge binary built elsewhere (an older
// release, to compare) instead of building this one.
func TestIdleConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	opts := IdleOptions{Conns: 300, Low: 100, PingInterval: time.Second, Window: 10 * time.Second, Settle: time.Second, PerProcess: 150}
	if os.Getenv("WSBRIDGE_LOAD_IDLE") != "" {
		opts = IdleOptions{} // the defaults: 19,000 from 2,000, 10s, 35s
		if v := os.Getenv("WSBRIDGE_LOAD_IDLE_CONNS"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				t.Fatalf("WSBRIDGE_LOAD_IDLE_CONNS=%q: want a positive integer", v)
			}
			opts.Conns = n
		}
	}
	opts.Binary = os.Getenv("WSBRIDGE_LOAD_BINARY")
	opts.Logf = t.Logf
	opts.ClientCmd = func(spec string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClientProcess$", "-test.count=1", "-test.v=false")
		cmd.Env = append(os.Environ(), "WSBRIDGE_LOAD_IDLE_CLIENTS="+spec)
		return cmd
	}
	rep, err := Idle(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%v", rep)
	if rep.Closed != 0 {
		t.Errorf("%d connections ended, want none (each answers its pings)", rep.Closed)
	}
	if rep.PingedTwice != rep.Conns {
		t.Errorf("%d of %d connections were pinged twice within %v (--ping-interval %v)", rep.PingedTwice, rep.Conns, rep.Window, rep.PingInterval)
	}
}

// TestIdleClientProcess is a client process of TestIdleConnections when
// that test runs this binary; otherwise it is skipped.
func TestIdleClientProcess(t *testing.T) {
	spec := os.Getenv("WSBRIDGE_LOAD_IDLE_CLIENTS")
	if spec == "" {
		t.Skip("only runs as TestIdleConnections' client process")
	}
	if err := RunIdleClients(context.Background(), spec, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}
