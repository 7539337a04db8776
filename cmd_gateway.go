package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/stack"
)

// DefaultGatewayHTTPAddr serves the gateway's /metrics, /healthz and /readyz.
const DefaultGatewayHTTPAddr = "127.0.0.1:9181"

// runGateway runs the self-hosted edge (SPEC §6) against an existing NATS:
// WebSocket clients on --addr invoke the three functions, which publish to
// NATS; bridges find this instance's push address through NATS.
func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("gateway", "\n\nRun the self-hosted WebSocket edge that replaces API Gateway: clients on /ws\ninvoke the three functions, which publish to NATS; bridges push to /push,\nfinding this instance through NATS. Run as many instances as you like behind\none load balancer.", stderr)
	o := stack.DefaultOptions()
	o.NATS.URL = defaultOpsURL
	o.Bridge, o.Demo, o.Edge = false, false, true
	o.Gateway.HTTPAddr = DefaultGatewayHTTPAddr
	host, _ := os.Hostname()
	o.Gateway.InstanceID = host
	var logFormat, logLevel string
	stackFlags(fs, &o, &logFormat, &logLevel)
	gatewayFlags(fs, &o.Gateway)
	fs.BoolVar(&o.Demo, "demo", false, "serve the demo page and run the demo backend")
	return runStack(ctx, "gateway", fs, args, &o, &logFormat, &logLevel, stdout, stderr)
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
	fs.DurationVar(&g.InstanceTTL, "instance-ttl", gateway.DefaultInstanceTTL, "life of this instance's record without a refresh; a dead instance's connections are announced lost after it (the bucket's creator sets it)")
}

// prepareGateway checks the edge's settings, binds its addresses before
// anything else starts (an address in use fails at once, naming its flag)
// and derives the advertised push URL.
func prepareGateway(ctx context.Context, o *stack.Options, stderr io.Writer) int {
	if o.NATS.URL == "" {
		fmt.Fprintln(stderr, "wsbridge gateway: --nats-url is required (use 'wsbridge dev' for an embedded NATS)")
		return 2
	}
	if err := subjects.CheckInstanceID(o.Gateway.InstanceID); err != nil {
		fmt.Fprintf(stderr, "wsbridge gateway: --instance-id: %v\n", err)
		return 2
	}
	ls, err := gateway.Listen(ctx, o.Gateway)
	if err != nil {
		fmt.Fprintf(stderr, "wsbridge %v\n", err)
		return 1
	}
	if o.Gateway.PushURL == "" {
		ln, scheme := ls.Push, "http://"
		if ln == nil {
			ln = ls.WS
			if o.Gateway.TLSCert != "" {
				scheme = "https://"
			}
		}
		addr := ln.Addr().(*net.TCPAddr)
		if addr.IP.IsUnspecified() {
			ls.Close()
			fmt.Fprintf(stderr, "wsbridge gateway: --push-url is required: %s listens on every interface, so the address bridges reach it at is not known\n", ln.Addr())
			return 2
		}
		path := o.Gateway.PushPath
		if path == "" {
			path = gateway.DefaultPushPath
		}
		o.Gateway.PushURL = scheme + addr.String() + path
	}
	o.Listeners = ls
	return 0
}
