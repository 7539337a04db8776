package main

import (
	"context"
	"fmt"
	"io"
)

func runSend(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "not built yet")
	return 1
}
func runClose(ctx context.Context, args []string, stdout, stderr io.Writer) int     { return runSend(ctx, args, stdout, stderr) }
func runBroadcast(ctx context.Context, args []string, stdout, stderr io.Writer) int { return runSend(ctx, args, stdout, stderr) }
func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) int      { return runSend(ctx, args, stdout, stderr) }
func runConns(ctx context.Context, args []string, stdout, stderr io.Writer) int     { return runSend(ctx, args, stdout, stderr) }
