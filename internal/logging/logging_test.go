package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		format, level string
		wantErr       string
		debug, json   bool
	}{
		{"", "", "", false, false},
		{"text", "debug", "", true, false},
		{"JSON", "Warning", "", false, true},
		{"json", "error", "", false, true},
		{"xml", "info", `log format "xml"`, false, false},
		{"text", "loud", `log level "loud"`, false, false},
	} {
		var buf bytes.Buffer
		log, err := New(&buf, tc.format, tc.level)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New(%q, %q) error %v, want %q", tc.format, tc.level, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("New(%q, %q): %v", tc.format, tc.level, err)
		}
		if got := log.Enabled(context.Background(), slog.LevelDebug); got != tc.debug {
			t.Errorf("New(%q, %q): debug enabled %v, want %v", tc.format, tc.level, got, tc.debug)
		}
		log.Error("x")
		if got := json.Valid(bytes.TrimSpace(buf.Bytes())); got != tc.json {
			t.Errorf("New(%q, %q) wrote %q: JSON %v, want %v", tc.format, tc.level, buf.String(), got, tc.json)
		}
	}
}

func TestFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var format, level string
	Flags(fs, &format, &level)
	if format != DefaultFormat || level != DefaultLevel {
		t.Errorf("defaults %q %q, want %q %q", format, level, DefaultFormat, DefaultLevel)
	}
	if err := fs.Parse([]string{"--log-format", "json", "--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	if format != "json" || level != "debug" {
		t.Errorf("parsed %q %q, want json debug", format, level)
	}
}
