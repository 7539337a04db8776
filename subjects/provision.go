package subjects

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamOptions size the streams and bucket Provision creates. Zero values
// take the defaults below.
type StreamOptions struct {
	Replicas        int           // 1; use 3 on a cluster
	InMaxAge        time.Duration // WS_IN retention, 24h
	OutMaxAge       time.Duration // WS_OUT: undelivered commands expire, 24h
	DLQMaxAge       time.Duration // WS_DLQ retention, 7 days
	RegistryTTL     time.Duration // WS_CONNS record TTL (safety net), 24h
	DuplicateWindow time.Duration // Nats-Msg-Id de-duplication window, 2m
}

func (o StreamOptions) withDefaults() StreamOptions {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	def(&o.InMaxAge, 24*time.Hour)
	def(&o.OutMaxAge, 24*time.Hour)
	def(&o.DLQMaxAge, 7*24*time.Hour)
	def(&o.RegistryTTL, 24*time.Hour)
	def(&o.DuplicateWindow, 2*time.Minute)
	return o
}

// StreamConfigs returns the configurations of WS_IN, WS_OUT and WS_DLQ.
func (n Names) StreamConfigs(o StreamOptions) []jetstream.StreamConfig {
	o = o.withDefaults()
	return []jetstream.StreamConfig{{
		Name:        n.StreamIn(),
		Description: "wsbridge inbound events: connect, message, disconnect",
		Subjects:    []string{n.Inbound()},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.InMaxAge,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	}, {
		Name:        n.StreamOut(),
		Description: "wsbridge outbound commands, consumed by the bridge",
		Subjects:    []string{n.Outbound()},
		Retention:   jetstream.WorkQueuePolicy,
		MaxAge:      o.OutMaxAge,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	}, {
		Name:        n.StreamDLQ(),
		Description: "wsbridge dead letters: outbound commands that could not be delivered",
		Subjects:    []string{n.DeadLetters()},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.DLQMaxAge,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	}}
}

// expiryMarkerTTL is how long the marker of an expired registry record stays
// visible to watchers: long enough for a restarting bridge to see it too.
const expiryMarkerTTL = time.Minute

// BucketConfig returns the configuration of the WS_CONNS registry bucket.
func (n Names) BucketConfig(o StreamOptions) jetstream.KeyValueConfig {
	o = o.withDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      n.Bucket(),
		Description: "wsbridge connection registry: token -> connect event",
		History:     1,
		TTL:         o.RegistryTTL,
		// A record that ages out leaves a marker, so registry watchers
		// (the bridge) see the expiry and can announce the disconnect.
		LimitMarkerTTL: expiryMarkerTTL,
		Replicas:       o.Replicas,
		Storage:        jetstream.FileStorage,
	}
}

// Provision creates or updates the streams WS_IN, WS_OUT, WS_DLQ and the KV
// bucket WS_CONNS under the prefix. It is idempotent: running it again with
// the same options changes nothing, with other options updates in place.
func Provision(ctx context.Context, js jetstream.JetStream, n Names, o StreamOptions) error {
	for _, cfg := range n.StreamConfigs(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	cfg := n.BucketConfig(o)
	_, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		// Servers before 2.11 keep no expiry markers: the registry works
		// the same, but expiries go unannounced.
		cfg.LimitMarkerTTL = 0
		_, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		return fmt.Errorf("provision bucket %s: %w", cfg.Bucket, err)
	}
	return nil
}
