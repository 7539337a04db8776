package scfrpc

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tencentyun/scf-go-lib/cloudfunction/messages"

	"github.com/wsbridge/wsbridge/test/buildtest"
)

const probePkg = "functions/scfrpc/internal/probe"

// buildProbe builds internal/probe, a function binary served by Start.
func buildProbe(t *testing.T) string {
	t.Helper()
	return buildtest.Binary(buildtest.BuildT(t, probePkg), probePkg)
}

// proc is a function process started by a test.
type proc struct {
	cmd  *exec.Cmd
	out  *buildtest.SyncBuffer
	done chan struct{}
	addr string
}

func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, out: &buildtest.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() && p.out.String() != "" {
			t.Logf("%s output:\n%s", filepath.Base(cmd.Path), p.out.String())
		}
	})
	return p
}

// startHanded runs bin as `wsbridge gateway --functions` does: serving on a
// loopback listener handed over, with env added.
func startHanded(t *testing.T, bin string, env ...string) (*proc, *Client) {
	t.Helper()
	h, err := NewHandover()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	h.Attach(cmd)
	p := startProc(t, cmd)
	h.Close()
	p.addr = h.Addr()
	return p, waitProc(t, p)
}

// startLibrary runs bin as SCF does: scf-go-lib listens on
// $_LAMBDA_SERVER_PORT itself, on every interface. The port is chosen here
// and bound there, so another process may take it in between: the start is
// tried again on a new port when the binary says so.
func startLibrary(t *testing.T, bin string) (*proc, *Client) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "_LAMBDA_SERVER_PORT="+strconv.Itoa(port))
		p := startProc(t, cmd)
		p.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		c, err := waitProcCtx(ctx, p)
		cancel()
		if err == nil {
			return p, c
		}
		if !strings.Contains(p.out.String(), "address already in use") || attempt == 5 {
			t.Fatalf("%s on _LAMBDA_SERVER_PORT=%d: %v\n%s", bin, port, err, p.out.String())
		}
	}
}

func waitProc(t *testing.T, p *proc) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := waitProcCtx(ctx, p)
	if err != nil {
		t.Fatalf("%s: %v\n%s", filepath.Base(p.cmd.Path), err, p.out.String())
	}
	return c
}

// waitProcCtx pings p until it answers, it exits or ctx ends.
func waitProcCtx(ctx context.Context, p *proc) (*Client, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-p.done:
			cancel(fmt.Errorf("process exited before it answered"))
		case <-ctx.Done():
		}
	}()
	c, err := WaitReady(ctx, p.addr, 5*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// rawInvoke sends req as the SCF runtime does and returns the response as is.
func rawInvoke(t *testing.T, c *Client, req messages.InvokeRequest) messages.InvokeResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	deadline := time.Now().Add(waitTimeout)
	req.Deadline = messages.InvokeRequest_Timestamp{Seconds: deadline.Unix(), Nanos: int64(deadline.Nanosecond())}
	var resp messages.InvokeResponse
	if err := c.call(ctx, "Function.Invoke", &req, &resp); err != nil {
		t.Fatalf("Function.Invoke %q: %v", req.Payload, err)
	}
	return resp
}

// TestServeMatchesLibrary invokes the same handler served by scf-go-lib
// (as under SCF) and by Serve (as under wsbridge gateway) with the same
// requests, and wants the same answers: payloads, the function context the
// handler sees, returned errors, panics, malformed payloads and contexts.
func TestServeMatchesLibrary(t *testing.T) {
	bin := buildProbe(t)
	_, lib := startLibrary(t, bin)
	_, handed := startHanded(t, bin)
	defer lib.Close()
	defer handed.Close()

	base := messages.InvokeRequest{
		RequestId: "req-1", FunctionName: "probe", FunctionVersion: "$LATEST", Namespace: "default",
		MemoryLimitInMb: 128, TimeLimitInMs: 3000,
	}
	cases := []struct {
		name   string
		change func(*messages.InvokeRequest)
	}{
		{"event", func(r *messages.InvokeRequest) { r.Payload = []byte(`{"do":"echo", "n": [1, 2]}`) }},
		{"environment", func(r *messages.InvokeRequest) {
			r.Payload = []byte(`{"env":"PROBE_SETTING"}`)
			r.Environment = `{"PROBE_SETTING":"from the request"}`
		}},
		{"client context", func(r *messages.InvokeRequest) {
			r.Payload = []byte(`{}`)
			r.ClientContext = []byte(`{"Client":{"app_title":"t"},"env":{"a":"b"},"custom":{"c":"d"}}`)
		}},
		{"error", func(r *messages.InvokeRequest) { r.Payload = []byte(`{"do":"fail"}`) }},
		{"panic", func(r *messages.InvokeRequest) { r.Payload = []byte(`{"do":"panic"}`) }},
		{"nil answer", func(r *messages.InvokeRequest) { r.Payload = []byte(`{"do":"nil"}`) }},
		{"not JSON", func(r *messages.InvokeRequest) { r.Payload = []byte(`{"do":`) }},
		{"bad client context", func(r *messages.InvokeRequest) {
			r.Payload = []byte(`{}`)
			r.ClientContext = []byte(`[`)
		}},
		{"bad environment", func(r *messages.InvokeRequest) {
			r.Payload = []byte(`{}`)
			r.Environment = `{"x":1}`
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := base
			tc.change(&req)
			want := rawInvoke(t, lib, req)
			got := rawInvoke(t, handed, req)
			if string(got.Payload) != string(want.Payload) {
				t.Errorf("payload\n got %s\nwant %s (scf-go-lib)", got.Payload, want.Payload)
			}
			if (got.Error == nil) != (want.Error == nil) {
				t.Fatalf("error %+v, scf-go-lib's %+v", got.Error, want.Error)
			}
			if want.Error == nil {
				return
			}
			g, w := *got.Error, *want.Error
			if g.Message != w.Message || g.Type != w.Type || g.ShouldExit != w.ShouldExit {
				t.Errorf("error %q type %q exit %v; scf-go-lib's %q type %q exit %v",
					g.Message, g.Type, g.ShouldExit, w.Message, w.Type, w.ShouldExit)
			}
			if tc.name == "panic" {
				// Both stacks name the panicking handler's frame alike.
				gf, wf := frame(g.StackTrace, "handle"), frame(w.StackTrace, "handle")
				if gf == nil || wf == nil || !reflect.DeepEqual(*gf, *wf) {
					t.Errorf("handler frame in the stack %+v, scf-go-lib's %+v", gf, wf)
				}
			}
		})
	}
}

func frame(st []*messages.InvokeResponse_Error_StackFrame, label string) *messages.InvokeResponse_Error_StackFrame {
	for _, f := range st {
		if f.Label == label {
			return f
		}
	}
	return nil
}

// TestHandedListenerStaysOnLoopback: a function started through a Handover
// listens on loopback only. Under SCF's own start the same binary listens on
// every interface, which the same checks see (so they can fail).
func TestHandedListenerStaysOnLoopback(t *testing.T) {
	bin := buildProbe(t)
	hp, hc := startHanded(t, bin)
	defer hc.Close()
	lp, lc := startLibrary(t, bin)
	defer lc.Close()

	// The variable naming the descriptor is gone from the process's
	// environment once read: a process it starts does not misread it.
	out, err := hc.Invoke(context.Background(), []byte(`{}`))
	if err != nil || strings.Contains(string(out), `"handedFD":"3"`) {
		t.Errorf("invoke: %s, %v; want an answer with no %s", out, err, EnvListenerFD)
	}

	if runtime.GOOS == "linux" {
		handedAddrs := listening(t, hp.cmd.Process.Pid)
		if len(handedAddrs) == 0 {
			t.Fatalf("function started through a handover listens on nothing")
		}
		for _, a := range handedAddrs {
			if !a.IP.IsLoopback() {
				t.Errorf("function started through a handover listens on %s, want loopback only", a)
			}
		}
		exposed := false
		for _, a := range listening(t, lp.cmd.Process.Pid) {
			exposed = exposed || a.IP.IsUnspecified()
		}
		if !exposed {
			t.Errorf("function started as SCF does listens on %v, want every interface (scf-go-lib's 0.0.0.0)", listening(t, lp.cmd.Process.Pid))
		}
	}

	ip := hostAddr()
	if ip == nil {
		t.Logf("no non-loopback address on this host: only the listening sockets were checked")
		return
	}
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), port(hp.addr)), waitTimeout); err == nil {
		c.Close()
		t.Errorf("function started through a handover accepted a connection on %s", ip)
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), port(lp.addr)), waitTimeout)
	if err != nil {
		t.Errorf("function started as SCF does refused a connection on %s: %v (the check would not see exposure)", ip, err)
	} else {
		c.Close()
	}
}

// TestLibraryOnlyBinaryIsNotExposed: a binary that serves with scf-go-lib
// alone ignores the handed listener; it must fail to listen rather than
// open its port on every interface.
func TestLibraryOnlyBinaryIsNotExposed(t *testing.T) {
	bin := buildProbe(t)
	h, err := NewHandover()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	h.Attach(cmd)
	// What such a binary sees: the variable it does not know is dropped
	// here, so the probe falls back to scf-go-lib's own listen.
	var env []string
	for _, kv := range cmd.Env {
		if !strings.HasPrefix(kv, EnvListenerFD+"=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	p := startProc(t, cmd)
	h.Close()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("a binary ignoring the handed listener kept running; its listening sockets: %v", listening(t, cmd.Process.Pid))
	}
	if !strings.Contains(p.out.String(), "address already in use") {
		t.Errorf("output %q, want scf-go-lib's failed listen (address already in use)", p.out.String())
	}
}

// TestHandedListenerMustBeLoopback: a malformed descriptor variable, or a
// listener on another address than loopback, is refused naming the rule.
func TestHandedListenerMustBeLoopback(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"x", "want the descriptor number"},
		{"1", "want the descriptor number"},
	} {
		t.Setenv(EnvListenerFD, tc.value)
		if _, err := handedListener(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%s: %v, want %q", EnvListenerFD, tc.value, err, tc.want)
		}
	}
	if _, ok := os.LookupEnv(EnvListenerFD); ok {
		t.Errorf("%s still set after it was read", EnvListenerFD)
	}

	// A process handed a listener on every interface refuses to serve.
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildProbe(t))
	cmd.ExtraFiles = []*os.File{f}
	cmd.Env = append(os.Environ(), EnvListenerFD+"=3")
	p := startProc(t, cmd)
	f.Close()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("a function handed a listener on %s kept running", ln.Addr())
	}
	if !strings.Contains(p.out.String(), "must be on loopback") {
		t.Errorf("handed a listener on %s: output %q, want it refused (must be on loopback)", ln.Addr(), p.out.String())
	}
}

// listening returns the TCP addresses process pid listens on (Linux /proc).
func listening(t *testing.T, pid int) []*net.TCPAddr {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var addrs []*net.TCPAddr
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ... inode (10th)
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
				continue
			}
			if a := procAddr(fields[1]); a != nil {
				addrs = append(addrs, a)
			}
		}
		f.Close()
	}
	return addrs
}

// procAddr decodes /proc/net/tcp's HEXIP:HEXPORT (the IP in host order by
// 32-bit words).
func procAddr(s string) *net.TCPAddr {
	h, p, ok := strings.Cut(s, ":")
	b, err := hex.DecodeString(h)
	if !ok || err != nil || len(b)%4 != 0 {
		return nil
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return nil
	}
	return &net.TCPAddr{IP: net.IP(b), Port: int(port)}
}

// hostAddr is an IPv4 address of this host that is not loopback, or nil.
func hostAddr() net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP
		}
	}
	return nil
}
