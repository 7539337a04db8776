// Package node runs the Node.js tests of gateway/wsbridge.js, the
// resumable-session client library, from go test: they are plain node:test
// scripts in this directory, with the npm package ws as their only
// dependency (package.json, package-lock.json).
package node

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// runTimeout bounds npm ci and node --test each: a limit on a hang, not a
// speed claim (the suite takes seconds).
const runTimeout = 5 * time.Minute

// minNode is the oldest Node.js wsbridge.js supports (18); these tests
// also want node --test's spec reporter, which came with 18.15.
const minNode, minNodeMinor = 18, 15

// lookNode finds node and npm, or skips or fails saying how to get them.
func lookNode(t *testing.T) (node, npm string) {
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

// run runs a command in the current directory and fails with its output.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
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

// TestWsBridgeJS runs the node:test scripts of this directory (the unit
// tests of wsbridge.js against an in-process server side of the protocol),
// installing their dependency first when node_modules is missing.
func TestWsBridgeJS(t *testing.T) {
	node, npm := lookNode(t)
	if _, err := os.Stat(filepath.Join("node_modules", "ws", "package.json")); err != nil {
		// npm ci installs exactly what package-lock.json says.
		run(t, npm, "ci", "--no-audit", "--no-fund")
	}
	out := run(t, node, "--test", "--test-reporter=spec")
	t.Logf("node --test:\n%s", out)
}
