package main

import (
	"context"
	"fmt"
	"io"
)

// runBridge is being built in the bridge package; placeholder until it lands.
func runBridge(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "wsbridge bridge: not built yet")
	return 1
}
