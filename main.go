// Command wsbridge runs WebSocket applications with NATS behind them: its own
// WebSocket edge turns clients' connects, messages and disconnects into NATS
// messages, and a bridge pushes the commands business services publish back to
// the edge holding each connection (Tencent Cloud API Gateway with SCF
// functions is the other supported front).
//
//	wsbridge gateway    the WebSocket edge (also what replaces API Gateway)
//	wsbridge bridge     the daemon: outbound NATS commands -> pushes to the edge
//	wsbridge dev        everything on one machine: NATS, bridge, gateway, demo
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
		"bridge":     {"run the bridge daemon (outbound NATS commands -> pushes to the edge or API Gateway)", runBridge},
		"dev":        {"run NATS, the bridge, the gateway and a demo on this machine", runDev},
		"gateway":    {"run the WebSocket edge: clients connect here, their events go to NATS", runGateway},
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
	fmt.Fprintln(w, "wsbridge: WebSocket applications with NATS behind them. Clients connect to the\n"+
		"edge (wsbridge gateway, or Tencent API Gateway with SCF functions); their events\n"+
		"go to NATS; the bridge pushes what services publish back to each connection.\n\n"+
		"usage: wsbridge <command> [flags]\n\ncommands:")
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
