package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestRefuseOldNATS runs the wsbridge binary's bridge, gateway and dev
// against a real nats-server older than wsbridge needs (Debian's 2.9, which
// test/run.sh installs): each exits 1 with one line naming the server's
// version and the one it needs, before it creates anything on the server.
func TestRefuseOldNATS(t *testing.T) {
	natsBin, version := natstest.InstalledServer(t)
	if subjects.VersionAtLeast(version, subjects.MinServerVersion) {
		t.Skipf("the nats-server on PATH (%s) is not older than %s: no old server to refuse", version, subjects.MinServerVersion)
	}
	old := natstest.StartProcess(t, natsBin, "jetstream { store_dir: \""+t.TempDir()+"\" }")
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")
	for _, args := range [][]string{
		{"bridge", "--push-url", "http://127.0.0.1:1/push", "--http-addr", ""},
		{"gateway", "--addr", "127.0.0.1:0", "--http-addr", ""},
		{"dev", "--addr", "127.0.0.1:0", "--http-addr", "", "--demo=false"},
	} {
		t.Run(args[0], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append(args, "--nats-url", old.URL)...)
			cmd.Env = append(cmd.Environ(), "WSBRIDGE_LOG_FORMAT=text")
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("still running against nats-server %s after 60s:\n%s", version, out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("exit %v, want 1:\n%s", err, out)
			}
			var refusal []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if strings.Contains(l, "too old") {
					refusal = append(refusal, l)
				}
			}
			if len(refusal) != 1 || !strings.Contains(refusal[0], version) || !strings.Contains(refusal[0], subjects.MinServerVersion) {
				t.Errorf("output:\n%s\nwant one line saying the server is too old, naming %s and %s", out, version, subjects.MinServerVersion)
			}
		})
	}
	// Nothing was created on the refused server.
	nc, err := nats.Connect(old.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := nc.Request("$JS.API.STREAM.NAMES", nil, 10*time.Second)
	if err != nil {
		t.Fatalf("stream names on nats-server %s: %v", version, err)
	}
	var names struct {
		Total   int      `json:"total"`
		Streams []string `json:"streams"`
	}
	if err := json.Unmarshal(m.Data, &names); err != nil || names.Total != 0 {
		t.Errorf("streams on the refused server: %s (%v), want none", m.Data, err)
	}
}
