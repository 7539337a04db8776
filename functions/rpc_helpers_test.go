package functions_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
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

// startFunction runs a function binary as wsbridge gateway does, serving on
// a loopback listener handed over (scfrpc.Handover), with env (NAME=value)
// on top of a WSBRIDGE_-free environment, and returns a client once
// Function.Ping answers. The process is killed when the test ends.
func startFunction(t testing.TB, bin string, env ...string) *scfrpc.Client {
	t.Helper()
	h, err := scfrpc.NewHandover()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WSBRIDGE_") && !strings.HasPrefix(kv, "_LAMBDA_SERVER_PORT=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	h.Attach(cmd)
	var out buildtest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Start()
	h.Close() // the child holds its own copy: a child that dies closes it
	if err != nil {
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
	c, err := scfrpc.WaitReady(ctx, h.Addr(), 20*time.Millisecond)
	if err != nil {
		t.Fatalf("%s: %v\n%s", filepath.Base(bin), err, out.String())
	}
	t.Cleanup(func() { c.Close() })
	return c
}
