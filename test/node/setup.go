// Package node holds the Node.js side of the tests of gateway/wsbridge.js,
// the resumable-session client library: node:test scripts against an
// in-process server side of the protocol (run by TestWsBridgeJS), and
// live_client.js, a client other packages' tests run against real gateways.
// The npm package ws is the scripts' only dependency (package.json,
// package-lock.json); Setup installs it.
package node

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// runTimeout bounds npm ci and node --test each: a limit on a hang, not a
// speed claim (the suite takes seconds).
const runTimeout = 5 * time.Minute

// minNode is the oldest Node.js wsbridge.js supports (18); these tests
// also want node --test's spec reporter, which came with 18.15.
const minNode, minNodeMinor = 18, 15

// Dir is this directory, where the scripts and node_modules are.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// Setup finds node, installs the scripts' dependency when node_modules
// lacks it (npm ci, one test process at a time), and returns node's path.
// Without node it skips when WSBRIDGE_SKIP_NODE=1 and fails otherwise,
// saying how to install it.
func Setup(t testing.TB) string {
	t.Helper()
	node, npm := lookNode(t)
	dir := Dir()
	lock, err := os.OpenFile(filepath.Join(dir, ".npm-ci.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	// Packages' tests run in parallel: two npm ci in one directory would
	// remove each other's node_modules.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws", "package.json")); err != nil {
		// npm ci installs exactly what package-lock.json says.
		Run(t, dir, npm, "ci", "--no-audit", "--no-fund")
	}
	return node
}

// lookNode finds node and npm, or skips or fails saying how to get them.
func lookNode(t testing.TB) (node, npm string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("WSBRIDGE_SKIP_NODE") == "1" {
			t.Skip("node not found and WSBRIDGE_SKIP_NODE=1")
		}
		t.Fatalf("node not found: install Node.js %d.%d or later with npm (Debian: apt-get install nodejs npm), "+
			"or set WSBRIDGE_SKIP_NODE=1 to skip the tests of gateway/wsbridge.js", minNode, minNodeMinor)
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", node, err)
	}
	m := regexp.MustCompile(`^v(\d+)\.(\d+)\.`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("%s --version printed %q, want vMAJOR.MINOR.PATCH", node, out)
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	if major < minNode || major == minNode && minor < minNodeMinor {
		t.Fatalf("%s is Node.js %s: want %d.%d or later", node, bytes.TrimSpace(out), minNode, minNodeMinor)
	}
	if npm, err = exec.LookPath("npm"); err != nil {
		t.Fatalf("node found but not npm: install npm (Debian: apt-get install npm)")
	}
	return node, npm
}

// Run runs a command in dir and fails with its output.
func Run(t testing.TB, dir, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NO_COLOR=1", "npm_config_update_notifier=false")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %v: not done within %v; output:\n%s", name, args, runTimeout, out)
	}
	if err != nil {
		t.Fatalf("%s %v: %v; output:\n%s", name, args, err, out)
	}
	return out
}
