package functions_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
)

const module = "github.com/wsbridge/wsbridge/functions/"

// buildFunctions builds the function binaries named by their package paths
// under functions/ (register, internal/noop, …) into a temporary directory
// and returns it; each binary is named after the package's last element.
func buildFunctions(t testing.TB, pkgs ...string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found: cannot build the function binaries")
	}
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, p := range pkgs {
		args = append(args, module+p)
	}
	cmd := exec.Command(goTool, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", pkgs, err, out)
	}
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, path.Base(p))); err != nil {
			t.Fatalf("built binary: %v", err)
		}
	}
	return dir
}

// syncBuffer collects a child process's output for the test log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startFunction runs a function binary as SCF does, listening on
// $_LAMBDA_SERVER_PORT, with env (NAME=value) on top of a WSBRIDGE_-free
// environment, and returns a client once Function.Ping answers. The process
// is killed when the test ends.
func startFunction(t testing.TB, bin string, env ...string) *scfrpc.Client {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close() // the child listens on it; a rare clash shows as "not ready"

	cmd := exec.Command(bin)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WSBRIDGE_") && !strings.HasPrefix(kv, "_LAMBDA_SERVER_PORT=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "_LAMBDA_SERVER_PORT="+port)
	cmd.Env = append(cmd.Env, env...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() && out.String() != "" {
			t.Logf("%s output:\n%s", filepath.Base(bin), out.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := scfrpc.WaitReady(ctx, net.JoinHostPort("127.0.0.1", port), 20*time.Millisecond)
	if err != nil {
		t.Fatalf("%s: %v\n%s", filepath.Base(bin), err, out.String())
	}
	t.Cleanup(func() { c.Close() })
	return c
}
