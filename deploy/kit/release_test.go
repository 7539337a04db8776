package kit

import (
	"archive/zip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestReleaseScript runs deploy/release.sh and checks the folder it fills:
// both static binaries, the four function zips with an executable "main",
// and SHA256SUMS matching every file.
func TestReleaseScript(t *testing.T) {
	out := t.TempDir()
	runIn(t, repo, []string{"VERSION=v0.0.0-kittest"}, "bash", "deploy/release.sh", out)

	want := []string{"wsbridge-linux-amd64", "wsbridge-linux-arm64", "register.zip", "transfer.zip", "cleanup.zip", "websocket.zip"}
	sums := map[string]string{}
	b, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		sum, name, ok := strings.Cut(l, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q: want \"<sum>  <file>\"", l)
		}
		sums[name] = sum
	}
	for _, name := range want {
		data, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Errorf("release lacks %s: %v", name, err)
			continue
		}
		h := sha256.Sum256(data)
		if got := hex.EncodeToString(h[:]); sums[name] != got {
			t.Errorf("SHA256SUMS says %s is %q, file hashes to %s", name, sums[name], got)
		}
	}
	if len(sums) != len(want) {
		t.Errorf("SHA256SUMS lists %d files, want %d: %v", len(sums), len(want), sums)
	}
	for arch, m := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		if err := checkStaticELF(filepath.Join(out, "wsbridge-linux-"+arch), m); err != nil {
			t.Error(err)
		}
	}
	for _, fn := range want[2:] {
		z, err := zip.OpenReader(filepath.Join(out, fn))
		if err != nil {
			t.Errorf("%s: %v", fn, err)
			continue
		}
		names := []string{}
		for _, f := range z.File {
			names = append(names, f.Name)
			if f.Name == "main" && f.Mode()&0o111 == 0 {
				t.Errorf("%s: main is not executable (%v)", fn, f.Mode())
			}
		}
		z.Close()
		if !slices.Equal(names, []string{"main"}) {
			t.Errorf("%s holds %q, want only main (SCF's Go runtime runs ./main)", fn, names)
		}
	}
	if runtime.GOOS == "linux" && (runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64") {
		v := runIn(t, out, nil, filepath.Join(out, "wsbridge-linux-"+runtime.GOARCH), "version")
		if !strings.HasPrefix(v, "wsbridge v0.0.0-kittest ") || !strings.Contains(v, runtime.Version()) {
			t.Errorf("wsbridge version of the release binary: %q; want the release version and %s", v, runtime.Version())
		}
	}
}
