package main

import (
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"testing"
)

// TestGatewayGC: the gateway sets its garbage collector's target to
// gatewayGOGC when GOGC is not set, and leaves the one GOGC set alone.
func TestGatewayGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	t.Setenv("GOGC", "80") // restored after the test
	gatewayGC(log)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("with GOGC set, the target changed to %d", got)
	}
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
	gatewayGC(log)
	if got := debug.SetGCPercent(100); got != gatewayGOGC {
		t.Errorf("without GOGC, the target is %d, want %d", got, gatewayGOGC)
	}
}
