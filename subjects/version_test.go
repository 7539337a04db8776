package subjects_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

func TestVersionAtLeast(t *testing.T) {
	for _, tc := range []struct {
		v, min string
		want   bool
	}{
		{"2.10.0", "2.10.0", true},
		{"2.10.22", "2.10.0", true},
		{"2.11.0", "2.10.0", true},
		{"3.0.0", "2.10.0", true},
		{"v2.12.1", "2.10.0", true},
		{"2.10.0-beta.3", "2.10.0", true},
		{"2.11.0-RC.1+build.7", "2.11.0", true},
		{"2.9.10", "2.10.0", false},
		{"2.9.25", "2.10.0", false},
		{"1.99.99", "2.10.0", false},
		{"2.2.0", "2.10.0", false}, // numbers, not strings: 10 > 2
		{"", "2.10.0", false},
		{"2.10", "2.10.0", false},
		{"two.ten.zero", "2.10.0", false},
		{"2.10.x", "2.10.0", false},
	} {
		if got := subjects.VersionAtLeast(tc.v, tc.min); got != tc.want {
			t.Errorf("VersionAtLeast(%q, %q) = %v, want %v", tc.v, tc.min, got, tc.want)
		}
	}
}

func TestCheckServerVersion(t *testing.T) {
	s := natstest.Start(t)
	if err := subjects.CheckServerVersion(natstest.Connect(t, s)); err != nil {
		t.Errorf("the embedded server (%s): %v, want accepted", s.ID(), err)
	}

	bin, version := natstest.InstalledServer(t)
	if subjects.VersionAtLeast(version, subjects.MinServerVersion) {
		t.Skipf("the nats-server on PATH (%s, %s) is not older than %s: no old server to refuse", bin, version, subjects.MinServerVersion)
	}
	p := natstest.StartProcess(t, bin, "")
	nc, err := nats.Connect(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	err = subjects.CheckServerVersion(nc)
	if !errors.Is(err, subjects.ErrServerTooOld) {
		t.Fatalf("nats-server %s: %v, want ErrServerTooOld", version, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, version) || !strings.Contains(msg, subjects.MinServerVersion) || strings.Contains(msg, "\n") {
		t.Errorf("refusal %q: want one line naming %s and %s", msg, version, subjects.MinServerVersion)
	}
}
