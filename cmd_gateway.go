package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/internal/logging"
	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// DefaultGatewayHTTPAddr serves the gateway's /metrics, /healthz and /readyz.
const DefaultGatewayHTTPAddr = "127.0.0.1:9181"

// gatewayConfig is everything `wsbridge gateway` reads from flags and the
// environment.
type gatewayConfig struct {
	conn        subjects.ConnOptions
	gw          gateway.Options
	functions   string
	auth        functions.AuthMode
	authTimeout time.Duration
	logFormat   string
	logLevel    string
}

// runGateway runs the self-hosted edge (SPEC §6) against an existing NATS:
// WebSocket clients on --addr invoke the three functions, which publish to
// NATS; bridges find this instance's push address through NATS.
func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("gateway", "\n\nRun the self-hosted WebSocket edge that replaces API Gateway: clients on /ws\ninvoke the three functions, which publish to NATS; bridges push to /push,\nfinding this instance through NATS. Run as many instances as you like behind\none load balancer.", stderr)
	c := gatewayConfig{conn: subjects.ConnOptions{URL: defaultOpsURL}, gw: gateway.DefaultOptions(),
		auth: functions.AuthOff, authTimeout: functions.DefaultAuthTimeout}
	c.gw.HTTPAddr = DefaultGatewayHTTPAddr
	c.gw.InstanceID, _ = os.Hostname()
	connFlags(fs, &c.conn)
	fs.StringVar(&c.gw.Prefix, "prefix", c.gw.Prefix, "subject prefix")
	edgeFlags(fs, &c.gw, "listen address of the WebSocket endpoint /ws (and of /push without --push-addr)")
	functionFlags(fs, &c.functions, &c.auth, &c.authTimeout)
	gatewayFlags(fs, &c.gw)
	logging.Flags(fs, &c.logFormat, &c.logLevel)
	if err := parseFlags(fs, args, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "wsbridge gateway:", err)
		}
		return exitCode(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsbridge gateway: unexpected arguments %q\n", fs.Args())
		return 2
	}
	log, err := logging.New(stderr, c.logFormat, c.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "wsbridge gateway:", err)
		return 2
	}
	if !flagSet(fs, "nats-url") {
		log.Warn("NO --nats-url: this gateway connects to "+defaultOpsURL+", where 'wsbridge dev' and a bridge without --nats-url run an EMBEDDED NATS. Give --nats-url (WSBRIDGE_NATS_URL) to use your NATS",
			"nats_url", c.conn.URL)
	}
	if code := checkGateway(&c, stderr); code != 0 {
		return code
	}
	gatewayGC(log)
	// Every address is bound before anything else starts: one in use
	// fails at once, naming its flag.
	ls, err := gateway.Listen(ctx, c.gw)
	if err != nil {
		fmt.Fprintln(stderr, "wsbridge", err)
		return 1
	}
	if err := advertisedPushURL(&c.gw, ls); err != nil {
		ls.Close()
		fmt.Fprintln(stderr, "wsbridge gateway:", err)
		return 2
	}
	return serveGateway(ctx, &c, ls, log, stdout)
}

// gatewayGOGC is the garbage collector's target of the gateway process when
// its environment sets no GOGC. An edge holds mostly idle connections whose
// live heap is small and makes little garbage: at Go's default of 100 the
// heap runs up to twice what is live. Measured with 19,000 idle
// connections (test/load): 10.2 KB RSS per connection at 100, 9.1 KB at
// 50, for 3.0 against 3.7 % of a core per 10,000 (pings every 10 s).
const gatewayGOGC = 50

// gatewayGC sets gatewayGOGC unless GOGC is set.
func gatewayGC(log *slog.Logger) {
	if v, ok := os.LookupEnv("GOGC"); ok {
		log.Debug("garbage collector target from GOGC", "gogc", v)
		return
	}
	debug.SetGCPercent(gatewayGOGC)
}

// gatewayFlags registers the flags of the edge alone (SPEC §6).
func gatewayFlags(fs *flag.FlagSet, g *gateway.Options) {
	fs.StringVar(&g.PushAddr, "push-addr", "", "listen address of the reverse-push endpoint /push (empty: served on --addr)")
	fs.StringVar(&g.PushURL, "push-url", "", "URL at which bridges reach this instance's /push (default: derived from --push-addr, or --addr, when that is a concrete address)")
	fs.StringVar(&g.PushToken, "push-token", "", "require 'Authorization: Bearer <token>' on every push (give the bridge the same --push-token)")
	fs.StringVar(&g.TLSCert, "tls-cert", "", "PEM certificate: serve wss:// and https:// on --addr")
	fs.StringVar(&g.TLSKey, "tls-key", "", "PEM key of --tls-cert")
	fs.Func("allowed-origins", "comma list of Origin values an upgrade may carry, e.g. https://app.example.com (empty: any); clients sending no Origin are not affected", func(v string) error {
		g.AllowedOrigins = nil
		for _, o := range strings.Split(v, ",") {
			if o = strings.TrimSpace(o); o != "" {
				g.AllowedOrigins = append(g.AllowedOrigins, o)
			}
		}
		return nil
	})
	fs.IntVar(&g.MaxConnectionsPerIP, "max-connections-per-ip", 0, "most WebSocket connections of one client IP; beyond it upgrades get 429 (0: no limit)")
	fs.IntVar(&g.MaxHTTPConnectionsPerIP, "max-http-connections-per-ip", 0, "most TCP connections of one peer address per listener that are not WebSockets (upgrades in progress, idle keep-alive); beyond it the address's longest idle one is closed, or the new one (0: a quarter of --max-http-connections; --trusted-proxies are exempt)")
	fs.DurationVar(&g.HandshakeTimeout, "handshake-timeout", gateway.DefaultHandshakeTimeout, "on --addr, longest TLS handshake plus request headers of a new connection, and longest keep-alive idle time when /push has --push-addr")
	fs.Func("trusted-proxies", "comma list of IPs and CIDRs of proxies whose X-Forwarded-For names the client IP (empty: the socket's peer is the client)", func(v string) error {
		p, err := gateway.ParseTrustedProxies(v)
		if err != nil {
			return err
		}
		g.TrustedProxies = p
		return nil
	})
	fs.StringVar(&g.HTTPAddr, "http-addr", g.HTTPAddr, "address of the gateway's /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&g.InstanceID, "instance-id", g.InstanceID, "this instance's name in connection ids and in the instances bucket (letters, digits, - _ .)")
	fs.DurationVar(&g.InstanceTTL, "instance-ttl", gateway.DefaultInstanceTTL, "life of this instance's record without a refresh, 1s to 15s; a dead instance's connections are announced lost about two of it later (the bucket's creator sets it)")
}

// checkGateway reports settings that cannot work before anything starts.
func checkGateway(c *gatewayConfig, stderr io.Writer) int {
	if c.conn.URL == "" {
		fmt.Fprintln(stderr, "wsbridge gateway: --nats-url is required (use 'wsbridge dev' for an embedded NATS)")
		return 2
	}
	if err := subjects.CheckInstanceID(c.gw.InstanceID); err != nil {
		fmt.Fprintf(stderr, "wsbridge gateway: --instance-id: %v\n", err)
		return 2
	}
	return 0
}

// advertisedPushURL derives --push-url from the push listener when it is
// a concrete address.
func advertisedPushURL(g *gateway.Options, ls *gateway.Listeners) error {
	if g.PushURL != "" {
		return nil
	}
	ln, scheme := ls.Push, "http://"
	if ln == nil {
		ln = ls.WS
		if g.TLSCert != "" {
			scheme = "https://"
		}
	}
	addr := ln.Addr().(*net.TCPAddr)
	if addr.IP.IsUnspecified() {
		return fmt.Errorf("--push-url is required: %s listens on every interface, so the address bridges reach it at is not known", ln.Addr())
	}
	path := g.PushPath
	if path == "" {
		path = gateway.DefaultPushPath
	}
	g.PushURL = scheme + addr.String() + path
	return nil
}

// serveGateway connects to NATS, starts the functions and serves until ctx
// ends (SIGINT/SIGTERM), then drains: clients get 1001 and one shutdown
// event each, within --shutdown-timeout.
func serveGateway(ctx context.Context, c *gatewayConfig, ls *gateway.Listeners, log *slog.Logger, stdout io.Writer) int {
	c.conn.Name = "wsbridge-gateway-" + c.gw.InstanceID
	nc, err := c.conn.Connect(nats.MaxReconnects(-1))
	if err != nil {
		ls.Close()
		log.Error("connect to NATS", "err", err)
		return 1
	}
	defer func() { _ = nc.Drain() }()
	if err := subjects.CheckServerVersion(nc); err != nil {
		ls.Close()
		log.Error("connect to NATS", "err", err)
		return 1
	}
	names := subjects.MustNew(c.gw.Prefix)
	if err := provisionMissing(ctx, nc, names); err != nil {
		ls.Close()
		log.Error("streams", "err", err)
		return 1
	}
	fo := functions.DefaultOptions()
	fo.NATS, fo.Prefix, fo.Auth, fo.AuthTimeout, fo.Logger = c.conn, c.gw.Prefix, c.auth, c.authTimeout, log
	fo.MaxMessageSize = int(c.gw.MaxMessageSize)
	fns, err := gateway.StartFunctions(ctx, gateway.FunctionsOptions{Dir: c.functions, Functions: fo, Conn: nc})
	if err != nil {
		ls.Close()
		log.Error("start functions", "err", err)
		return 1
	}
	defer func() { _ = fns.Close() }()
	fns.Apply(&c.gw)
	c.gw.NATS, c.gw.Logger = nc, log
	reg := metrics.NewProcessRegistry()
	c.gw.Registerer, c.gw.Gatherer = reg, reg
	g, err := gateway.New(c.gw)
	if err != nil {
		ls.Close()
		log.Error("gateway", "err", err)
		return 1
	}
	scheme := "ws://"
	if c.gw.TLSCert != "" {
		scheme = "wss://"
	}
	entries := [][2]string{
		{"websocket", scheme + ls.WS.Addr().String() + c.gw.WSPath},
		{"reverse push", c.gw.PushURL},
		{"nats", subjects.RedactURL(c.conn.URL)},
		{"instance", c.gw.InstanceID},
	}
	if ls.HTTP != nil {
		entries = append(entries, [2]string{"gateway ops", "http://" + ls.HTTP.Addr().String() + "/metrics   (/healthz, /readyz)"})
	}
	// A NATS connection closed for good (credentials revoked) leaves the
	// functions nothing to publish to: stop, and exit non-zero so the
	// supervisor restarts the instance.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var natsLost atomic.Bool
	closed := nc.StatusChanged(nats.CLOSED)
	go func() {
		select {
		case <-closed:
			log.Error("nats connection closed for good; shutting down", "err", nc.LastError())
			natsLost.Store(true)
			stop()
		case <-sctx.Done():
		}
	}()
	served := make(chan error, 1)
	go func() { served <- g.ServeAll(sctx, ls) }()
	// ServeAll advertises the instance before it accepts a client; the
	// banner waits for neither (a client early on is simply served).
	printBanner(stdout, "gateway", c.gw.Prefix, entries)
	if err := <-served; err != nil {
		if nc.IsClosed() && !natsLost.Load() {
			// Closed while starting: a step of the start saw it before
			// the status change did. Say why as the watcher would.
			log.Error("nats connection closed for good; shutting down", "err", nc.LastError())
		}
		log.Error("gateway stopped", "err", err)
		return 1
	}
	if natsLost.Load() {
		return 1
	}
	log.Info("gateway stopped")
	return 0
}

// provisionMissing creates the streams and the registry when they do not
// exist yet (a gateway started before any bridge); existing ones are the
// bridge's to configure and are left alone (their replicas and ages must
// not be reset to defaults).
func provisionMissing(ctx context.Context, nc *nats.Conn, names subjects.Names) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	missing := false
	for _, cfg := range names.StreamConfigs(subjects.StreamOptions{}) {
		if _, err := js.Stream(ctx, cfg.Name); errors.Is(err, jetstream.ErrStreamNotFound) {
			missing = true
		} else if err != nil {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := js.KeyValue(ctx, names.Bucket()); errors.Is(err, jetstream.ErrBucketNotFound) {
		missing = true
	} else if err != nil {
		return fmt.Errorf("bucket %s: %w", names.Bucket(), err)
	}
	if !missing {
		return nil
	}
	return subjects.Provision(ctx, js, names, subjects.StreamOptions{})
}
