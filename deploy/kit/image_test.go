package kit

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// No container engine runs these tests: they check what an image build
// depends on without one — the Dockerfile's shape, that every path it copies
// is in the build context left by .dockerignore, and that the command builds
// static from exactly that context for both platforms.

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, COPY, RUN, …
	args string
}

func parseDockerfile(t *testing.T, b []byte) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if rest, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("Dockerfile ends inside a continued line: %q", cur.String())
	}
	return out
}

// dockerignore is the build context filter: patterns anchored at the context
// root, matched against a path and each of its parent directories, "**/"
// matching any depth. Exceptions ("!") are refused rather than half-supported.
type dockerignore []string

func readDockerignore(t *testing.T) dockerignore {
	t.Helper()
	var d dockerignore
	for _, l := range strings.Split(string(readRepoFile(t, ".dockerignore")), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf(".dockerignore: exception %q is not supported by this check", l)
		}
		d = append(d, strings.Trim(path.Clean(l), "/"))
	}
	return d
}

func (d dockerignore) excludes(rel string) bool {
	for p := rel; p != "." && p != "/" && p != ""; p = path.Dir(p) {
		for _, pat := range d {
			if m, _ := path.Match(pat, p); m {
				return true
			}
			if sub, ok := strings.CutPrefix(pat, "**/"); ok {
				parts := strings.Split(p, "/")
				for i := range parts {
					if m, _ := path.Match(sub, strings.Join(parts[i:], "/")); m {
						return true
					}
				}
			}
		}
	}
	return false
}

// buildContext copies the repository's tracked-or-not files that
// .dockerignore leaves into a temporary directory: what `docker build .`
// would send.
func buildContext(t *testing.T, ign dockerignore) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(repo, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repo, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if ign.excludes(rel) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if e.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !e.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t, readRepoFile(t, "deploy/Dockerfile"))
	ign := readDockerignore(t)
	var froms, users, entry, expose []string
	staticBuild := false
	for _, in := range ins {
		switch in.cmd {
		case "RUN":
			if strings.Contains(in.args, "CGO_ENABLED=0") && strings.Contains(in.args, "go build") &&
				strings.Contains(in.args, "-X main.version=") {
				staticBuild = true
			}
		case "FROM":
			froms = append(froms, in.args)
		case "USER":
			users = append(users, in.args)
		case "ENTRYPOINT":
			entry = append(entry, in.args)
		case "EXPOSE":
			expose = append(expose, strings.Fields(in.args)...)
		case "COPY", "ADD":
			fields := strings.Fields(in.args)
			if slices.ContainsFunc(fields, func(f string) bool { return strings.HasPrefix(f, "--from=") }) {
				continue
			}
			var srcs []string
			for _, f := range fields[:len(fields)-1] {
				if !strings.HasPrefix(f, "--") {
					srcs = append(srcs, f)
				}
			}
			if len(srcs) == 0 {
				t.Errorf("%s %s: no source", in.cmd, in.args)
			}
			for _, s := range srcs {
				rel := path.Clean(s)
				if _, err := os.Stat(filepath.Join(repo, filepath.FromSlash(rel))); err != nil {
					t.Errorf("%s %s: source %s does not exist in the repository", in.cmd, in.args, s)
				} else if rel != "." && ign.excludes(rel) {
					t.Errorf("%s %s: source %s is excluded by .dockerignore", in.cmd, in.args, s)
				}
			}
		}
	}
	if !staticBuild {
		t.Error("no RUN CGO_ENABLED=0 go build … -X main.version=…: want a static build stamped with the version")
	}
	if len(froms) < 2 {
		t.Errorf("FROM %q: want a multi-stage build", froms)
	}
	if len(froms) > 0 {
		final := froms[len(froms)-1]
		if !strings.Contains(final, "distroless/static") && final != "scratch" {
			t.Errorf("final stage FROM %s: want distroless/static (CA certificates, no shell) or scratch", final)
		}
	}
	if len(users) == 0 {
		t.Error("no USER: the image would run as root")
	} else if u := strings.Split(users[len(users)-1], ":")[0]; u == "root" || u == "0" {
		t.Errorf("USER %s: want a non-root user", users[len(users)-1])
	}
	var ep []string
	if len(entry) != 1 || json.Unmarshal([]byte(entry[0]), &ep) != nil || !slices.Equal(ep, []string{"wsbridge"}) {
		t.Errorf("ENTRYPOINT %q: want [\"wsbridge\"] in exec form", entry)
	}
	if !slices.Contains(expose, "9180") {
		t.Errorf("EXPOSE %q: want the metrics port 9180", expose)
	}
}

// TestStaticBinaryFromBuildContext builds wsbridge as the Dockerfile does
// (CGO_ENABLED=0, -trimpath) from the files .dockerignore leaves, for both
// image platforms, and checks each binary is a static ELF of its machine.
func TestStaticBinaryFromBuildContext(t *testing.T) {
	ctx := buildContext(t, readDockerignore(t))
	for _, arch := range []struct {
		goarch  string
		machine elf.Machine
	}{{"amd64", elf.EM_X86_64}, {"arm64", elf.EM_AARCH64}} {
		t.Run(arch.goarch, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "wsbridge")
			runIn(t, ctx, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch.goarch, "GOFLAGS=-mod=readonly"},
				"go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
			if err := checkStaticELF(out, arch.machine); err != nil {
				t.Error(err)
			}
		})
	}
}

// checkStaticELF reports unless path is an ELF executable for machine with
// no interpreter and no shared libraries (runs on distroless/static).
func checkStaticELF(path string, machine elf.Machine) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Machine != machine {
		return fmt.Errorf("%s: machine %v, want %v", path, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: has an ELF interpreter (dynamically linked)", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Errorf("%s: links shared libraries %q", path, libs)
	}
	return nil
}

func TestDockerignoreMatching(t *testing.T) {
	d := dockerignore{".git", "deploy/kit", "**/testdata/fuzz", "*.zip"}
	for rel, want := range map[string]bool{
		".git/config":                           true,
		"deploy/kit/go.mod":                     true,
		"deploy/Dockerfile":                     false,
		"subjects/testdata/fuzz/FuzzToken/x":    true,
		"subjects/token.go":                     false,
		"register.zip":                          true,
		"functions/register/main.go":            false,
		"deploy/kitchen/x":                      false,
		"a/b/testdata/fuzz":                     true,
		"testdata/fuzzy":                        false,
		"deploy/helm/wsbridge/templates/x.yaml": false,
	} {
		if got := d.excludes(rel); got != want {
			t.Errorf("excludes(%q) = %v, want %v", rel, got, want)
		}
	}
}
