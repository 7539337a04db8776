// Package buildtest builds this module's commands for tests that run them as
// separate processes (function binaries over SCF net/rpc, the wsbridge
// daemon killed mid-run), and collects those processes' output.
package buildtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Module is the import path every package argument is relative to.
const Module = "github.com/wsbridge/wsbridge"

// Build compiles the module's packages (paths relative to the module root,
// "" or "." for the root command) into dir, without the race detector so the
// binaries are the ones deployed. Each binary is named after its package's
// last element ("wsbridge" for the root).
func Build(dir string, pkgs ...string) error {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, p := range pkgs {
		args = append(args, importPath(p))
	}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	for _, p := range pkgs {
		if _, err := os.Stat(Binary(dir, p)); err != nil {
			return fmt.Errorf("binary of %s not built: %w", importPath(p), err)
		}
	}
	return nil
}

// BuildT is Build into a temporary directory of the test, which it returns.
func BuildT(t testing.TB, pkgs ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := Build(dir, pkgs...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Binary is the path Build gives the binary of pkg in dir.
func Binary(dir, pkg string) string {
	return filepath.Join(dir, path.Base(importPath(pkg)))
}

func importPath(p string) string {
	p = strings.TrimPrefix(strings.TrimPrefix(p, "./"), "/")
	if p == "" || p == "." {
		return Module
	}
	return Module + "/" + p
}

// SyncBuffer collects a child process's output (stdout and stderr may write
// at once) for a failure message.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
