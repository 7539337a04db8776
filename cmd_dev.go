package main

import (
	"context"
	"fmt"
	"io"
)

// runDev is being built with the gateway emulator; placeholder until it lands.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "wsbridge dev: not built yet")
	return 1
}

// runGateway is being built with the gateway emulator; placeholder until it lands.
func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "wsbridge gateway: not built yet")
	return 1
}
