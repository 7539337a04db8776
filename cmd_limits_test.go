package main

import (
	"bytes"
	"testing"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/subjects"
)

// The inbound limits of the edge default on; 0 turns one off (a negative
// value in gateway.Options), a negative one is refused. The stream bounds
// and the API's limits of the bridge reach its options, from flags or the
// environment.
func TestLimitFlags(t *testing.T) {
	parse := func(args []string, env map[string]string) (gateway.Options, error) {
		g := gateway.DefaultOptions()
		fs := newFlagSet("gateway", "", new(bytes.Buffer))
		edgeFlags(fs, &g, "")
		err := parseFlags(fs, args, func(k string) string { return env[k] })
		return g, err
	}
	g, err := parse(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g.InRate != gateway.DefaultInRate || g.InBurst != gateway.DefaultInBurst || g.InBytesRate != gateway.DefaultInBytesRate || g.InBytesBurst != gateway.DefaultInBytesBurst {
		t.Errorf("defaults: rate %v burst %d bytes rate %d bytes burst %d", g.InRate, g.InBurst, g.InBytesRate, g.InBytesBurst)
	}
	g, err = parse([]string{"--in-rate", "0", "--in-burst", "20"}, map[string]string{"WSBRIDGE_IN_BYTES_RATE": "0"})
	if err != nil {
		t.Fatal(err)
	}
	if g.InRate >= 0 || g.InBytesRate >= 0 || g.InBurst != 20 {
		t.Errorf("--in-rate 0, WSBRIDGE_IN_BYTES_RATE=0: rate %v bytes rate %d burst %d; want both off (negative) and burst 20", g.InRate, g.InBytesRate, g.InBurst)
	}
	for _, bad := range [][]string{{"--in-rate", "-1"}, {"--in-bytes-rate", "1.5"}, {"--in-rate", "many"}} {
		if _, err := parse(bad, nil); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}

	var c bridgeConfig
	fs := newFlagSet("bridge", "", new(bytes.Buffer))
	bridgeFlags(fs, &c)
	if err := parseFlags(fs, []string{"--in-max-bytes", "1000000", "--api-queue", "8"}, func(k string) string {
		return map[string]string{"WSBRIDGE_DLQ_MAX_BYTES": "2000000", "WSBRIDGE_API_MAX_REQUEST_BYTES": "4096"}[k]
	}); err != nil {
		t.Fatal(err)
	}
	o := c.opts
	if o.Streams.InMaxBytes != 1000000 || o.Streams.DLQMaxBytes != 2000000 || o.Streams.OutMaxBytes != subjects.DefaultOutMaxBytes ||
		o.APIQueue != 8 || o.APIMaxRequestBytes != 4096 || o.APIWorkers != bridge.DefaultAPIWorkers {
		t.Errorf("bridge options: streams %+v api workers %d queue %d max request %d", o.Streams, o.APIWorkers, o.APIQueue, o.APIMaxRequestBytes)
	}
}
