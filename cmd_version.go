package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is the release version, set by the release build with
// -ldflags '-X main.version=v1.2.3'; empty means "ask the build info".
var version string

// buildVersion is what `wsbridge version` reports, read from the binary's
// build information so `go install …@v1.2.3`, `go build` in a checkout and
// the release script each report something true.
type buildVersion struct {
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"`
	Time     string `json:"time,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func readBuildVersion(release string, info *debug.BuildInfo, ok bool) buildVersion {
	v := buildVersion{Version: "(unknown)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if ok {
		v.Version = info.Main.Version
		if info.GoVersion != "" {
			v.Go = info.GoVersion
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Revision = s.Value
			case "vcs.time":
				v.Time = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
	}
	if release != "" {
		v.Version = release
	}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	return v
}

func (v buildVersion) String() string {
	s := "wsbridge " + v.Version
	if v.Revision != "" {
		s += " revision " + v.Revision
		if v.Modified {
			s += " (modified)"
		}
	}
	if v.Time != "" {
		s += " " + v.Time
	}
	return s + " " + v.Go + " " + v.Platform
}

// runVersion prints the module version, VCS revision and Go version.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "\n\nPrint the version, VCS revision and Go version this binary was built with.", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "wsbridge version:", err)
		}
		return exitCode(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsbridge version: unexpected arguments %q\n", fs.Args())
		return 2
	}
	info, ok := debug.ReadBuildInfo()
	v := readBuildVersion(version, info, ok)
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(v)
		return 0
	}
	fmt.Fprintln(stdout, v)
	return 0
}
