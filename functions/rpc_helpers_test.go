package functions_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
	"github.com/wsbridge/wsbridge/test/buildtest"
)

// buildFunctions builds the function binaries named by their package paths
// under functions/ (register, internal/noop, …) into a temporary directory
// and returns it; each binary is named after the package's last element.
func buildFunctions(t testing.TB, pkgs ...string) string {
	t.Helper()
	for i, p := range pkgs {
		pkgs[i] = "functions/" + p
	}
	return buildtest.BuildT(t, pkgs...)
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
	var out buildtest.SyncBuffer
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
