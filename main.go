// Command wsbridge connects WebSocket clients behind Tencent Cloud API Gateway
// to business services over NATS.
//
//	wsbridge bridge     the daemon: outbound NATS subjects -> reverse-push posts
//	wsbridge dev        everything on one machine: NATS, bridge, gateway emulator, demo
//	wsbridge gateway    the self-hosted WebSocket edge that replaces API Gateway
//	wsbridge send|close|broadcast|tail|conns|partitions|dlq   operator commands
//	wsbridge version    version, VCS revision and Go version of this binary
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand: it parses its own flags from args and returns
// the process exit code.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"bridge":     {"run the bridge daemon (outbound subjects -> reverse push)", runBridge},
		"dev":        {"run NATS, the bridge, the gateway emulator and a demo on this machine", runDev},
		"gateway":    {"run the self-hosted WebSocket edge that replaces API Gateway", runGateway},
		"send":       {"send a message to one connection", runSend},
		"close":      {"close one connection", runClose},
		"broadcast":  {"send a message to every connection (or a group or user)", runBroadcast},
		"tail":       {"print inbound events (and optionally dead letters) as they happen", runTail},
		"conns":      {"list registered connections", runConns},
		"dlq":        {"list, show and redrive the dead letters stored in WS_DLQ", runDLQ},
		"partitions": {"show each outbound partition's owner, backlog and lag", runPartitions},
		"version":    {"print the version, VCS revision and Go version", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "wsbridge: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	return cmd.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: wsbridge <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nEvery flag also reads WSBRIDGE_<FLAG> (--nats-url <-> WSBRIDGE_NATS_URL).\nRun 'wsbridge <command> --help' for its flags.")
}
