package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/stack"
)

// stackFlags registers the flags `dev` and `gateway` share.
func stackFlags(fs *flag.FlagSet, o *stack.Options, logFormat, logLevel *string) {
	connFlags(fs, &o.NATS)
	g := &o.Gateway
	fs.StringVar(&o.Prefix, "prefix", o.Prefix, "subject prefix")
	fs.StringVar(&g.Addr, "addr", g.Addr, "listen address of the emulator: demo page on /, WebSocket on /ws, reverse push on /push")
	fs.StringVar(&o.Functions, "functions", "", "invoke the handlers as SCF binaries over net/rpc: a directory with register, transfer and cleanup, or the websocket binary (empty: in process)")
	fs.Func("auth", "connect authorization: off (default), optional or required", func(v string) error {
		switch m := functions.AuthMode(v); m {
		case functions.AuthOff, functions.AuthOptional, functions.AuthRequired:
			o.Auth = m
			return nil
		}
		return fmt.Errorf("want off, optional or required")
	})
	fs.DurationVar(&o.AuthTimeout, "auth-timeout", o.AuthTimeout, "how long to wait for the connect authorization reply")
	fs.DurationVar(&g.IdleTimeout, "idle-timeout", g.IdleTimeout, "close connections idle this long")
	fs.Int64Var(&g.MaxMessageSize, "max-message-size", g.MaxMessageSize, "largest frame in bytes, either way")
	fs.IntVar(&g.MaxConnections, "max-connections", g.MaxConnections, "most WebSocket connections at once")
	fs.DurationVar(&g.FunctionTimeout, "function-timeout", g.FunctionTimeout, "deadline of each function invocation")
	fs.StringVar(logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// runDev runs NATS, the bridge, the emulator and the demo on one machine.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("dev", "\n\nRun everything on this machine: embedded NATS with JetStream, the bridge,\nthe API Gateway emulator with the three functions, a demo page and backend.", stderr)
	o := stack.DefaultOptions()
	var logFormat, logLevel string
	stackFlags(fs, &o, &logFormat, &logLevel)
	fs.StringVar(&o.NATSListen, "nats-listen", o.NATSListen, "listen address of the embedded NATS server (when --nats-url is empty)")
	fs.StringVar(&o.DataDir, "data-dir", "", "JetStream storage of the embedded NATS server (empty: a temporary directory)")
	fs.StringVar(&o.BridgeOptions.HTTPAddr, "http-addr", o.BridgeOptions.HTTPAddr, "address of the bridge's /metrics, /healthz and /readyz (empty: off)")
	fs.BoolVar(&o.Demo, "demo", true, "serve the demo page and run the demo backend")
	return runStack(ctx, "dev", fs, args, &o, &logFormat, &logLevel, stdout, stderr)
}

// runGateway runs the emulator alone against an existing NATS: run the bridge
// beside it with --push-url pointing at its /push.
func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("gateway", "\n\nRun the API Gateway emulator alone: WebSocket clients on /ws invoke the\nthree functions, which publish to NATS; the reverse-push address is /push.", stderr)
	o := stack.DefaultOptions()
	o.NATS.URL = defaultOpsURL
	o.Bridge, o.Demo = false, false
	var logFormat, logLevel string
	stackFlags(fs, &o, &logFormat, &logLevel)
	fs.BoolVar(&o.Demo, "demo", false, "serve the demo page and run the demo backend")
	return runStack(ctx, "gateway", fs, args, &o, &logFormat, &logLevel, stdout, stderr)
}

func runStack(ctx context.Context, name string, fs *flag.FlagSet, args []string, o *stack.Options, logFormat, logLevel *string, stdout, stderr io.Writer) int {
	if err := parseFlags(fs, args, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "wsbridge %s: %v\n", name, err)
		}
		return exitCode(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsbridge %s: unexpected arguments %q\n", name, fs.Args())
		return 2
	}
	if name == "gateway" && o.NATS.URL == "" {
		fmt.Fprintln(stderr, "wsbridge gateway: --nats-url is required (use 'wsbridge dev' for an embedded NATS)")
		return 2
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "wsbridge %s: %v\n", name, err)
		return 2
	}
	addrs := []listenAddr{{"addr", o.Gateway.Addr}}
	if o.Bridge {
		addrs = append(addrs, listenAddr{"http-addr", o.BridgeOptions.HTTPAddr})
	}
	if o.NATS.URL == "" {
		addrs = append(addrs, listenAddr{"nats-listen", o.NATSListen})
	}
	if err := checkListen(addrs...); err != nil {
		fmt.Fprintf(stderr, "wsbridge %s: %v\n", name, err)
		return 1
	}
	o.Logger = log
	st, err := stack.Start(ctx, *o)
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	printBanner(stdout, name, st, *o)
	// The functions, the bridge and the demo share one NATS connection:
	// closed for good, nothing works any more, so exit non-zero.
	closed := st.Conn.StatusChanged(nats.CLOSED)
	code := 0
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case <-closed:
		log.Error("nats connection closed for good; shutting down", "err", st.Conn.LastError())
		code = 1
	}
	done := make(chan error, 1)
	go func() { done <- st.Close() }()
	select {
	case err := <-done:
		if err != nil && code == 0 {
			log.Error("shutdown", "err", err)
			return 1
		}
	case <-time.After(45 * time.Second):
		log.Error("shutdown did not finish in 45s")
		return 1
	}
	return code
}

func printBanner(w io.Writer, name string, st *stack.Stack, o stack.Options) {
	n := subjects.MustNew(o.Prefix)
	fmt.Fprintf(w, "wsbridge %s is running\n", name)
	if o.Demo {
		fmt.Fprintf(w, "  demo chat      %s   (open it in a browser)\n", st.URL())
	}
	fmt.Fprintf(w, "  websocket      %s\n", st.WSURL())
	fmt.Fprintf(w, "  reverse push   %s\n", st.PushURL())
	fmt.Fprintf(w, "  nats           %s\n", subjects.RedactURL(st.NATSURL()))
	if m := st.MetricsURL(); m != "" {
		fmt.Fprintf(w, "  metrics        %s\n", m)
	}
	fmt.Fprintf(w, "\ntalk to the connected clients with the nats CLI (a client's token is on the demo page):\n")
	for _, l := range [][2]string{
		{"nats sub '" + n.Inbound() + "'", "what clients send, connects and disconnects"},
		{"nats pub " + n.Send("<token>") + " hello", "to one client"},
		{"nats pub " + n.Broadcast() + " 'hello all'", "to every client"},
		{"nats pub " + n.Close("<token>") + " ''", "close one client"},
	} {
		fmt.Fprintf(w, "  %-40s # %s\n", l[0], l[1])
	}
	fmt.Fprintln(w)
}
