package subjects

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	Partitions      int           // outbound partitions (DefaultPartitions)
	// AckWait and MaxAckPending configure each partition's consumer: how
	// long a message held by a bridge that died waits before redelivery
	// (DefaultAckWait; live bridges extend it) and how many messages one
	// partition may hold unacknowledged (DefaultPartitionAckPending).
	AckWait       time.Duration
	MaxAckPending int
}

// Defaults of the partition consumers.
const (
	DefaultAckWait             = 4 * time.Second
	DefaultPartitionAckPending = 1000
)

// ErrOldLayout reports an outbound stream of the previous, unpartitioned
// layout that still holds messages.
var ErrOldLayout = errors.New("outbound stream has the unpartitioned layout")

// ErrPartitionsChanged reports an outbound stream partitioned another way
// that still holds messages.
var ErrPartitionsChanged = errors.New("outbound stream has another partition count")

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
	if o.Partitions <= 0 {
		o.Partitions = DefaultPartitions
	}
	def(&o.AckWait, DefaultAckWait)
	if o.MaxAckPending <= 0 {
		o.MaxAckPending = DefaultPartitionAckPending
	}
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
		Description: "wsbridge outbound commands, partitioned by connection, consumed by the bridges",
		Subjects:    n.OutSubjects(),
		// Interest: a direct send is removed once its partition's consumer
		// acked it, a fan-out once every partition did.
		Retention:        jetstream.InterestPolicy,
		SubjectTransform: n.OutTransform(o.Partitions),
		RePublish:        n.OutLogRePublish(),
		MaxAge:           o.OutMaxAge,
		Duplicates:       o.DuplicateWindow,
		Replicas:         o.Replicas,
		Storage:          jetstream.FileStorage,
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
//
// The outbound stream and its partition consumers are created together: an
// interest stream drops what no consumer is interested in. An outbound
// stream of another layout is converted only when it is empty; otherwise
// Provision fails with ErrOldLayout or ErrPartitionsChanged, saying how to
// migrate, and changes nothing.
func Provision(ctx context.Context, js jetstream.JetStream, n Names, o StreamOptions) error {
	o = o.withDefaults()
	if o.Partitions > MaxPartitions {
		return fmt.Errorf("provision: %d partitions is above the limit of %d", o.Partitions, MaxPartitions)
	}
	if err := convertOut(ctx, js, n, o); err != nil {
		return err
	}
	for _, cfg := range n.StreamConfigs(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	// Two consumers per partition, a round trip each: eight at a time.
	cfgs := make(chan jetstream.ConsumerConfig)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cfg := range cfgs {
				if _, err := js.CreateOrUpdateConsumer(ctx, n.StreamOut(), cfg); err != nil {
					errs <- fmt.Errorf("provision consumer %s on %s: %w", cfg.Durable, n.StreamOut(), err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for p := 0; p < o.Partitions; p++ {
		for _, cfg := range []jetstream.ConsumerConfig{n.PartitionConsumerConfig(p, o), n.FanOutConsumerConfig(p, o)} {
			select {
			case cfgs <- cfg:
			case err = <-errs:
				break feed
			}
		}
	}
	close(cfgs)
	wg.Wait()
	if err == nil && len(errs) > 0 {
		err = <-errs
	}
	if err != nil {
		return err
	}
	cfg := n.BucketConfig(o)
	_, err = js.CreateOrUpdateKeyValue(ctx, cfg)
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

// PartitionConsumerConfig is the configuration of partition p's durable
// consumer of direct commands on the outbound stream.
func (n Names) PartitionConsumerConfig(p int, o StreamOptions) jetstream.ConsumerConfig {
	o = o.withDefaults()
	c := partitionConsumerConfig(o)
	c.Durable = n.PartitionConsumer(p)
	c.Description = fmt.Sprintf("wsbridge outbound partition %d of %d: sends and closes, worked by one bridge at a time", p, o.Partitions)
	c.FilterSubject = n.PartitionFilter(p)
	return c
}

// FanOutConsumerConfig is the configuration of partition p's durable
// consumer of fan-outs (broadcast, group, user) on the outbound stream.
func (n Names) FanOutConsumerConfig(p int, o StreamOptions) jetstream.ConsumerConfig {
	o = o.withDefaults()
	c := partitionConsumerConfig(o)
	c.Durable = n.FanOutConsumer(p)
	c.Description = fmt.Sprintf("wsbridge outbound partition %d of %d: fan-outs, worked with the partition's sends", p, o.Partitions)
	c.FilterSubjects = n.FanOutFilters(p)
	return c
}

// partitionConsumerConfig is what both consumers of a partition share.
func partitionConsumerConfig(o StreamOptions) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.AckWait,
		MaxAckPending: o.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// Unlimited at the server: the bridge counts deliveries itself and
		// dead-letters, because a server-side MaxDeliver leaves the message
		// in the stream with only an advisory as trace.
		MaxDeliver: -1,
		Replicas:   o.Replicas,
	}
}

// OutPartitions reports the partition count of an outbound stream's
// configuration, 0 when it is not partitioned.
func (n Names) OutPartitions(cfg jetstream.StreamConfig) int {
	if cfg.SubjectTransform == nil {
		return 0
	}
	d := cfg.SubjectTransform.Destination
	i := strings.Index(d, "{{partition(")
	if i < 0 {
		return 0
	}
	var count int
	if _, err := fmt.Sscanf(d[i:], "{{partition(%d,", &count); err != nil {
		return 0
	}
	return count
}

// convertOut replaces an empty outbound stream of another layout (the
// unpartitioned work queue, or another partition count) and refuses a
// non-empty one with how to migrate.
func convertOut(ctx context.Context, js jetstream.JetStream, n Names, o StreamOptions) error {
	st, err := js.Stream(ctx, n.StreamOut())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("provision stream %s: %w", n.StreamOut(), err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("provision stream %s: %w", n.StreamOut(), err)
	}
	old := n.OutPartitions(info.Config)
	if info.Config.Retention == jetstream.InterestPolicy && old == o.Partitions {
		// The first partitioned layout had one consumer per partition,
		// with several filter subjects; this one has two.
		_, err := st.Consumer(ctx, n.FanOutConsumer(0))
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("provision stream %s: %w", n.StreamOut(), err)
		}
		if msgs := info.State.Msgs; msgs > 0 {
			return fmt.Errorf("%w: %s holds %d messages for the single partition consumers of the previous release; let its bridges drain it (until `nats stream info %s` shows 0 messages, with publishers paused), then start this one, which converts the empty stream",
				ErrOldLayout, n.StreamOut(), msgs, n.StreamOut())
		}
	} else if msgs := info.State.Msgs; msgs > 0 {
		if old == 0 {
			return fmt.Errorf("%w: %s holds %d messages for consumer %s; let a bridge of the previous version drain it (until `nats stream info %s` shows 0 messages, with publishers paused), then start this one, which converts the empty stream",
				ErrOldLayout, n.StreamOut(), msgs, n.Consumer(), n.StreamOut())
		}
		return fmt.Errorf("%w: %s holds %d messages in %d partitions, %d asked; keep --partitions %d until it is empty (pause the publishers, let the bridges drain it), then restart every bridge with --partitions %d",
			ErrPartitionsChanged, n.StreamOut(), msgs, old, o.Partitions, old, o.Partitions)
	}
	// Empty: the retention policy of a work queue cannot be changed in place,
	// and stale partition consumers would hold interest forever; start over.
	if err := js.DeleteStream(ctx, n.StreamOut()); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("provision: replace empty stream %s: %w", n.StreamOut(), err)
	}
	return nil
}
