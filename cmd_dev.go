package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/internal/logging"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/stack"
)

// stackFlags registers the flags of `dev`.
func stackFlags(fs *flag.FlagSet, o *stack.Options, logFormat, logLevel *string) {
	connFlags(fs, &o.NATS)
	fs.StringVar(&o.Prefix, "prefix", o.Prefix, "subject prefix")
	edgeFlags(fs, &o.Gateway, "listen address of the emulator: demo page on /, WebSocket on /ws, reverse push on /push")
	functionFlags(fs, &o.Functions, &o.Auth, &o.AuthTimeout)
	logging.Flags(fs, logFormat, logLevel)
}

// edgeFlags registers the gateway's flags that `dev` and `gateway` share.
func edgeFlags(fs *flag.FlagSet, g *gateway.Options, addrUsage string) {
	fs.StringVar(&g.Addr, "addr", g.Addr, addrUsage)
	fs.DurationVar(&g.IdleTimeout, "idle-timeout", g.IdleTimeout, "close connections with no data frame either way for this long")
	fs.Int64Var(&g.MaxMessageSize, "max-message-size", g.MaxMessageSize, "largest frame in bytes, either way")
	fs.IntVar(&g.MaxConnections, "max-connections", g.MaxConnections, "most WebSocket connections at once; beyond it upgrades get 503")
	fs.DurationVar(&g.FunctionTimeout, "function-timeout", g.FunctionTimeout, "deadline of each function invocation")
	fs.DurationVar(&g.ReadTimeout, "read-timeout", g.ReadTimeout, "longest read of one HTTP request, headers and body, on every listener")
	fs.DurationVar(&g.WriteTimeout, "write-timeout", g.WriteTimeout, "longest write of one frame to a client (a client slower than that is disconnected) and, doubled, of one HTTP answer")
	fs.Int64Var(&g.SendQueueBytes, "send-queue-bytes", g.SendQueueBytes, "bytes pushed to one client and not yet written; a push past it closes the client with 1008 and gets 410")
	fs.IntVar(&g.SendQueueMessages, "send-queue-messages", g.SendQueueMessages, "messages pushed to one client and not yet written; a push past it closes the client with 1008 and gets 410")
	fs.DurationVar(&g.KeepAliveTimeout, "keep-alive-timeout", g.KeepAliveTimeout, "close a keep-alive HTTP connection idle this long")
	fs.IntVar(&g.MaxHeaderBytes, "max-header-bytes", g.MaxHeaderBytes, "largest request line and headers of an HTTP request; beyond it 431")
	fs.IntVar(&g.MaxHTTPConnections, "max-http-connections", g.MaxHTTPConnections, "TCP connections per listener that are not WebSockets (pushes, scrapes, upgrades in progress); beyond it they are closed at once")
	fs.DurationVar(&g.PingInterval, "ping-interval", g.PingInterval, "ping a client quiet this long; no pong within as long again closes it (negative: no pings)")
	fs.DurationVar(&g.ShutdownTimeout, "shutdown-timeout", g.ShutdownTimeout, "time open connections get to close on SIGINT/SIGTERM")
	fs.Var(offIfZero[float64]{&g.InRate}, "in-rate", "messages a second one client may send past its burst; beyond it the client is closed with 1008 (0: no limit)")
	fs.IntVar(&g.InBurst, "in-burst", g.InBurst, "messages one client may send at once before --in-rate applies")
	fs.Var(offIfZero[int64]{&g.InBytesRate}, "in-bytes-rate", "bytes a second one client may send past its burst; beyond it the client is closed with 1008 (0: no limit)")
	fs.Int64Var(&g.InBytesBurst, "in-bytes-burst", g.InBytesBurst, "bytes one client may send at once before --in-bytes-rate applies (at least --max-message-size)")
	fs.Var(windowFlag{&g.ResumeWindow}, "resume-window", "how long a resumable session (a client that asked for one) outlives its socket, for the client to resume it here or at another instance (0: sessions off)")
	fs.Int64Var(&g.ResumeBuffer, "resume-buffer", g.ResumeBuffer, "bytes one session keeps for its client (sent and not acknowledged, or kept while it is away); past it the session ends")
	fs.Int64Var(&g.ResumeBufferTotal, "resume-buffer-total", g.ResumeBufferTotal, "bytes every session of this instance keeps together; past it the session that needs more ends")
	fs.StringVar(&g.ServiceID, "service-id", gateway.DefaultServiceID, "requestContext.serviceId of the connect events (API Gateway's service id, e.g. service-0ck2a1q4, for backends that check it)")
	fs.StringVar(&g.Stage, "stage", gateway.DefaultStage, "requestContext.stage of the connect events (API Gateway's environment: release, prepub or test)")
}

// offIfZero is a limit flag whose 0 turns the limit off: gateway.Options
// take 0 for the default and a negative value for off.
type offIfZero[T int64 | float64] struct{ p *T }

func (f offIfZero[T]) String() string {
	if f.p == nil || *f.p < 0 {
		return "0"
	}
	return fmt.Sprint(*f.p)
}

func (f offIfZero[T]) Set(v string) error {
	x, err := strconv.ParseFloat(v, 64)
	n := T(x)
	if err != nil || float64(n) != x {
		return fmt.Errorf("want 0 or a positive number, got %q", v)
	}
	if n < 0 {
		return fmt.Errorf("want 0 (no limit) or more, got %v", n)
	}
	if n == 0 {
		n = -1
	}
	*f.p = n
	return nil
}

// windowFlag is --resume-window: gateway.Options take 0 for the default
// and a negative window for off, the flag 0 for off.
type windowFlag struct{ p *time.Duration }

func (f windowFlag) String() string {
	if f.p == nil || *f.p < 0 {
		return "0s"
	}
	if *f.p == 0 {
		return gateway.DefaultResumeWindow.String()
	}
	return f.p.String()
}

func (f windowFlag) Set(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("want a duration such as 30s, or 0 to turn sessions off, got %q", v)
	}
	if d == 0 {
		d = -1
	}
	*f.p = d
	return nil
}

// functionFlags registers how the three functions run.
func functionFlags(fs *flag.FlagSet, dir *string, auth *functions.AuthMode, authTimeout *time.Duration) {
	fs.StringVar(dir, "functions", "", "invoke the handlers as SCF binaries over net/rpc: a directory with register, transfer and cleanup, or the websocket binary (empty: in process)")
	fs.Func("auth", "connect authorization: off (default), optional or required", func(v string) error {
		switch m := functions.AuthMode(v); m {
		case functions.AuthOff, functions.AuthOptional, functions.AuthRequired:
			*auth = m
			return nil
		}
		return fmt.Errorf("want off, optional or required")
	})
	fs.DurationVar(authTimeout, "auth-timeout", *authTimeout, "how long to wait for the connect authorization reply")
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
	log, err := logging.New(stderr, *logFormat, *logLevel)
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
	if o.NATS.URL != "" {
		if err := checkNATSVersion(o.NATS); err != nil {
			log.Error("connect to NATS", "err", err)
			return 1
		}
	}
	o.Logger = log
	st, err := stack.Start(ctx, *o)
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	var entries [][2]string
	if o.Demo {
		entries = append(entries, [2]string{"demo chat", st.URL() + "   (open it in a browser)"})
	}
	entries = append(entries, [2]string{"websocket", st.WSURL()}, [2]string{"reverse push", st.PushURL()},
		[2]string{"nats", subjects.RedactURL(st.NATSURL())})
	if m := st.MetricsURL(); m != "" {
		entries = append(entries, [2]string{"metrics", m})
	}
	printBanner(stdout, name, o.Prefix, entries)
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

// checkNATSVersion connects to an external NATS once to refuse a server
// older than wsbridge needs before anything starts on it.
func checkNATSVersion(co subjects.ConnOptions) error {
	co.Name = "wsbridge-version-check"
	nc, err := co.Connect(nats.MaxReconnects(0))
	if err != nil {
		return err
	}
	defer nc.Close()
	return subjects.CheckServerVersion(nc)
}

// printBanner tells where everything is: entries are (what, where) pairs.
func printBanner(w io.Writer, name, prefix string, entries [][2]string) {
	n := subjects.MustNew(prefix)
	fmt.Fprintf(w, "wsbridge %s is running\n", name)
	for _, e := range entries {
		fmt.Fprintf(w, "  %-14s %s\n", e[0], e[1])
	}
	fmt.Fprintf(w, "\ntalk to the connected clients with the nats CLI (a client's token is in its connect event):\n")
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
