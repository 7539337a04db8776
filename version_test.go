package main

import (
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	code, out, stderr := runCmd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "wsbridge ") || !strings.Contains(out, runtime.Version()) ||
		!strings.Contains(out, runtime.GOOS+"/"+runtime.GOARCH) {
		t.Fatalf("wsbridge version: code %d stdout %q stderr %q; want 0 and a line naming %s", code, out, stderr, runtime.Version())
	}
	code, out, _ = runCmd(t, "version", "--json")
	var v buildVersion
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Version == "" || v.Go == "" {
		t.Fatalf("wsbridge version --json: code %d %q (%v); want a JSON object with version and go", code, out, err)
	}
	if code, _, stderr := runCmd(t, "version", "extra"); code != 2 || !strings.Contains(stderr, "unexpected arguments") {
		t.Errorf("wsbridge version extra: code %d stderr %q; want 2 and unexpected arguments", code, stderr)
	}
}

func TestReadBuildVersion(t *testing.T) {
	info := &debug.BuildInfo{
		GoVersion: "go1.99.1",
		Main:      debug.Module{Path: "github.com/wsbridge/wsbridge", Version: "v1.4.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123abcd"},
			{Key: "vcs.time", Value: "2026-11-29T08:54:50Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name    string
		release string
		info    *debug.BuildInfo
		ok      bool
		want    string
	}{
		{"go install @version", "", info, true, "wsbridge v1.4.0 revision 0123abcd (modified) 2026-11-29T08:54:50Z go1.99.1 "},
		{"release build", "v2.0.0", info, true, "wsbridge v2.0.0 revision 0123abcd (modified) 2026-11-29T08:54:50Z go1.99.1 "},
		{"no VCS", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, true, "wsbridge (devel) " + runtime.Version() + " "},
		{"no build info", "", nil, false, "wsbridge (unknown) " + runtime.Version() + " "},
	}
	for _, tt := range tests {
		got := readBuildVersion(tt.release, tt.info, tt.ok).String()
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: got %q, want prefix %q", tt.name, got, tt.want)
		}
	}
}
