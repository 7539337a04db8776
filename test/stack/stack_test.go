package stack

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/test/natstest"
)

// startTimeout bounds a stack's start; a safety net, not a speed check.
const startTimeout = 60 * time.Second

func testOptions(t *testing.T) Options {
	o := DefaultOptions()
	o.NATSListen = "127.0.0.1:0"
	o.Gateway.Addr = "127.0.0.1:0"
	o.BridgeOptions.HTTPAddr = "127.0.0.1:0"
	o.Demo = false
	return o
}

// freeAddr is a loopback address free now, for a test that must know an
// address before Start fails; another process may take it meanwhile.
func freeAddr(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(natstest.FreePort(t)))
}

// free reports whether addr can be listened on again.
func free(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func TestStartAndClose(t *testing.T) {
	o := testOptions(t)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	st, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(st.MetricsURL())
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("bridge metrics: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
	gw := st.gwAddr.String()
	natsAddr := strings.TrimPrefix(st.NATSURL(), "nats://")
	if err := st.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, a := range []string{natsAddr, gw} {
		if !free(a) {
			t.Errorf("%s still bound after Close", a)
		}
	}
	if !st.Conn.IsClosed() {
		t.Error("NATS connection open after Close")
	}
}

// TestStartFailsCleanly makes the last step (the bridge's HTTP listener)
// fail: everything started before it is stopped again.
func TestStartFailsCleanly(t *testing.T) {
	o := testOptions(t)
	o.NATSListen = freeAddr(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	o.BridgeOptions.HTTPAddr = taken.Addr().String()
	gw := freeAddr(t)
	o.Gateway.Addr = gw
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if st, err := Start(ctx, o); err == nil {
		st.Close()
		t.Fatal("Start with the bridge's HTTP address taken succeeded")
	}
	for _, a := range []string{o.NATSListen, gw} {
		if !free(a) {
			t.Errorf("%s still bound after a failed Start", a)
		}
	}
}
