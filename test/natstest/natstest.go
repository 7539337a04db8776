// Package natstest runs real NATS servers, embedded in the test process, for
// wsbridge's tests: JetStream on, loopback, a free port, storage in the
// test's temporary directory, shut down when the test ends.
package natstest

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/test/buildtest"
)

// Start runs a JetStream server for one test; mods adjust its options
// (authentication, TLS, …) before it starts.
func Start(t testing.TB, mods ...func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	}
	for _, m := range mods {
		m(o)
	}
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatal("nats-server not ready for connections within 10s")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// Connect opens a client connection to s, closed when the test ends.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", s.ClientURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// FreePort returns a loopback port free at the time of the call, for a
// server that must be told its port before it starts (cluster routes, a
// listen address checked before start). Another process may take it before
// it is used: prefer port 0 (or -1), or StartProcess.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Process is a nats-server running as a process of its own, listening on a
// loopback port it chose itself: no port is picked here and bound there,
// where another process could take it in between.
type Process struct {
	// URL is the client URL (nats://127.0.0.1:<port>).
	URL string
	// Out is what the server printed.
	Out *buildtest.SyncBuffer

	cmd  *exec.Cmd
	conf string
	dir  string
	done chan struct{}
}

// StartProcess runs the nats-server binary bin with the configuration
// conf (which must not set listen or ports_file_dir) on a free loopback
// port, and waits until it listens (at most 30s). It is killed when the
// test ends.
func StartProcess(t testing.TB, bin, conf string) *Process {
	t.Helper()
	dir := t.TempDir()
	p := &Process{Out: &buildtest.SyncBuffer{}, conf: filepath.Join(dir, "nats.conf"), dir: dir, done: make(chan struct{})}
	p.write(t, conf)
	p.cmd = exec.Command(bin, "-c", p.conf)
	p.cmd.Stdout, p.cmd.Stderr = p.Out, p.Out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	// The server writes its ports, once it listens, to <name>_<pid>.ports.
	ports := filepath.Join(dir, "ports", fmt.Sprintf("%s_%d.ports", filepath.Base(bin), p.cmd.Process.Pid))
	deadline := time.After(30 * time.Second)
	for {
		if b, err := os.ReadFile(ports); err == nil {
			var pf struct {
				Nats []string `json:"nats"`
			}
			if json.Unmarshal(b, &pf) == nil && len(pf.Nats) > 0 {
				p.URL = pf.Nats[0]
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before it listened:\n%s", bin, p.Out.String())
		case <-deadline:
			t.Fatalf("%s wrote no ports file %s within 30s:\n%s", bin, ports, p.Out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (p *Process) write(t testing.TB, conf string) {
	t.Helper()
	full := fmt.Sprintf("listen: \"127.0.0.1:-1\"\nports_file_dir: %q\n%s\n", filepath.Join(p.dir, "ports"), conf)
	if err := os.MkdirAll(filepath.Join(p.dir, "ports"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.conf, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Reload rewrites the configuration (the same port) and makes the server
// read it again (SIGHUP).
func (p *Process) Reload(t testing.TB, conf string) {
	t.Helper()
	p.write(t, conf)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// InstalledServer returns the nats-server on PATH and its version (from
// --version, without the v), skipping the test when there is none.
// test/run.sh installs Debian's (2.9), older than wsbridge needs, for the
// checks that an old server is refused.
func InstalledServer(t testing.TB) (bin, version string) {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Skip("no nats-server on PATH (test/run.sh installs Debian's 2.9 for this test)")
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", bin, err, out)
	}
	// "nats-server: v2.9.10"
	f := strings.Fields(string(out))
	if len(f) == 0 {
		t.Fatalf("%s --version printed nothing", bin)
	}
	return bin, strings.TrimPrefix(f[len(f)-1], "v")
}
