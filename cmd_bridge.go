package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/internal/embedded"
	"github.com/wsbridge/wsbridge/internal/logging"
	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// bridgeConfig is everything `wsbridge bridge` reads from flags and the
// environment.
type bridgeConfig struct {
	conn       subjects.ConnOptions
	opts       bridge.Options
	dataDir    string
	natsListen string
	logFormat  string
	logLevel   string
	ignored    []string // flags of earlier releases that were set
}

func bridgeFlags(fs *flag.FlagSet, c *bridgeConfig) {
	connFlags(fs, &c.conn)
	o := &c.opts
	fs.StringVar(&o.Prefix, "prefix", subjects.DefaultPrefix, "subject prefix (streams and bucket derive from it)")
	fs.StringVar(&o.PushURL, "push-url", "", "reverse-push address for connections no wsbridge gateway instance claims (those are found through NATS): API Gateway's; with gateway instances only, their push address (required)")
	fs.StringVar(&o.PushToken, "push-token", "", "sent as 'Authorization: Bearer <token>' with every push (the gateway's --push-token)")
	fs.BoolVar(&o.AllowPlainPush, "allow-plain-push", false, "send the push token to gateway instances that advertise a plain http:// push URL off this host (without it their pushes are dead-lettered: the token would cross the network in the clear)")
	fs.StringVar(&o.HTTPAddr, "http-addr", bridge.DefaultHTTPAddr, "address of /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&c.dataDir, "data-dir", "wsbridge-data", "JetStream storage of the embedded NATS server (when --nats-url is empty)")
	fs.StringVar(&c.natsListen, "nats-listen", "127.0.0.1:4222", "listen address of the embedded NATS server (when --nats-url is empty)")
	logging.Flags(fs, &c.logFormat, &c.logLevel)
	fs.IntVar(&o.Concurrency, "push-concurrency", bridge.DefaultConcurrency, "pushes in flight at once (and HTTP connections to the gateway)")
	fs.DurationVar(&o.PushTimeout, "push-timeout", bridge.DefaultPushTimeout, "timeout of one push")
	fs.Float64Var(&o.PushRate, "push-rate", 0, "pushes per second at most (0: unlimited)")
	fs.IntVar(&o.PushBurst, "push-burst", 0, "burst of the push rate limit (0: push-concurrency)")
	fs.IntVar(&o.MaxAttempts, "max-attempts", bridge.DefaultMaxAttempts, "push attempts before a transient failure is dead-lettered")
	fs.DurationVar(&o.BackoffBase, "retry-backoff", bridge.DefaultBackoffBase, "delay after the first transient failure (doubles each attempt)")
	fs.DurationVar(&o.BackoffMax, "retry-backoff-max", bridge.DefaultBackoffMax, "maximum delay between attempts")
	fs.IntVar(&o.Partitions, "partitions", bridge.DefaultPartitions, "outbound partitions, the same on every bridge of a stream (changing it needs an empty stream)")
	fs.DurationVar(&o.LeaseTTL, "lease-ttl", bridge.DefaultLeaseTTL, "lifetime of a partition lease without renewal: a dead or cut-off bridge's partitions move after it")
	fs.Int64Var(&o.MaxHeldBytes, "max-held-bytes", bridge.DefaultMaxHeldBytes, "bytes of commands held at once by this bridge (bodies and push bodies), shared by its partitions; a partition past its share stops taking and reads the log again once it drained")
	fs.IntVar(&o.APIWorkers, "api-workers", bridge.DefaultAPIWorkers, "request-reply API requests served at once")
	fs.IntVar(&o.APIQueue, "api-queue", bridge.DefaultAPIQueue, "API requests waiting for a worker; one finding the queue full is answered \"busy\" at once")
	fs.Int64Var(&o.APIMaxRequestBytes, "api-max-request-bytes", bridge.DefaultAPIMaxRequestBytes, "largest API request; a larger one is answered \"request too large\" unread")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", bridge.DefaultShutdownTimeout, "time in-flight pushes get to finish on SIGINT/SIGTERM")
	fs.IntVar(&o.Streams.Replicas, "replicas", 1, "replicas of the streams and bucket (3 on a cluster)")
	fs.DurationVar(&o.Streams.RegistryTTL, "registry-ttl", 0, "TTL of registry records, the safety net for lost disconnects (0: 24h)")
	fs.DurationVar(&o.Streams.OutMaxAge, "out-max-age", 0, "undelivered outbound commands expire after this (0: 24h)")
	fs.Int64Var(&o.Streams.OutMaxBytes, "out-max-bytes", subjects.DefaultOutMaxBytes, "size bound of the outbound log; when full, publishers get an error and nothing stored is dropped")
	fs.Int64Var(&o.Streams.InMaxBytes, "in-max-bytes", subjects.DefaultInMaxBytes, "size bound of the inbound events stream; when full, its oldest events are dropped to make room")
	fs.Int64Var(&o.Streams.DLQMaxBytes, "dlq-max-bytes", subjects.DefaultDLQMaxBytes, "size bound of the dead-letter stream; when full, its oldest dead letters are dropped to make room")
	fs.DurationVar(&o.ReplayWindow, "replay-window", bridge.DefaultReplayWindow, "how long the outbound log keeps what every partition delivered before it is trimmed")
	// Settings of the partition consumers of earlier releases: the log has
	// no consumers. Accepted so that existing configurations start; a
	// warning names them.
	for _, name := range []string{"ack-wait", "max-ack-pending", "max-deliver"} {
		fs.Func(name, "no longer used (the outbound log has no consumers); accepted and ignored", func(string) error {
			c.ignored = append(c.ignored, name)
			return nil
		})
	}
}

// runBridge runs the bridge daemon until SIGINT/SIGTERM (ctx), then drains.
func runBridge(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("bridge", "\n\nConsume outbound subjects and push them to the gateway's reverse-push address.", stderr)
	var c bridgeConfig
	bridgeFlags(fs, &c)
	if err := parseFlags(fs, args, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "wsbridge bridge:", err)
		}
		return exitCode(err)
	}
	log, err := logging.New(stderr, c.logFormat, c.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "wsbridge bridge:", err)
		return 2
	}
	for _, name := range c.ignored {
		log.Warn("flag no longer used and ignored: the outbound log has no consumers", "flag", "--"+name)
	}
	if err := c.opts.WithDefaults().Validate(); err != nil {
		fmt.Fprintln(stderr, "wsbridge bridge:", err)
		return 2
	}
	addrs := []listenAddr{{"http-addr", c.opts.HTTPAddr}}
	if c.conn.URL == "" {
		addrs = append(addrs, listenAddr{"nats-listen", c.natsListen})
	}
	if err := checkListen(addrs...); err != nil {
		fmt.Fprintln(stderr, "wsbridge bridge:", err)
		return 1
	}
	if err := runBridgeDaemon(ctx, c, log); err != nil {
		log.Error("bridge failed", "err", err)
		return 1
	}
	return 0
}

func runBridgeDaemon(ctx context.Context, c bridgeConfig, log *slog.Logger) error {
	c.conn.Name = "wsbridge-bridge"
	var nc *nats.Conn
	if c.conn.URL == "" {
		en, err := embedded.Start(embedded.Options{Listen: c.natsListen, DataDir: c.dataDir, Name: c.conn.Name})
		if err != nil {
			return err
		}
		defer en.Close()
		// Loud: run as a production example without its NATS, a bridge
		// used to start this second NATS silently, beside the real one.
		log.Warn("NO --nats-url: this bridge started an EMBEDDED NATS server of its own, for trying wsbridge out; "+
			"gateways, functions and backends on your NATS will never reach it. Give --nats-url (WSBRIDGE_NATS_URL) to use your NATS",
			"embedded_url", en.URL(), "data_dir", en.Dir)
		nc = en.Conn
	} else {
		var err error
		nc, err = c.conn.Connect(
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err == nil {
					// The bridge closing its own connection (stopping):
					// nothing was lost.
					log.Debug("nats connection closed")
					return
				}
				log.Warn("nats disconnected", "err", err)
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", subjects.RedactURL(nc.ConnectedUrl())) }),
		)
		if err != nil {
			return err
		}
		if err := subjects.CheckServerVersion(nc); err != nil {
			nc.Close()
			return err
		}
		log.Info("connected to NATS", "url", subjects.RedactURL(nc.ConnectedUrl()), "server_version", nc.ConnectedServerVersion())
	}
	defer nc.Close()
	reg := metrics.NewProcessRegistry()
	b, err := bridge.New(c.opts, bridge.Deps{Conn: nc, Logger: log, Registerer: reg, Gatherer: reg})
	if err != nil {
		return err
	}
	return b.Run(ctx)
}
