package subjects

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	// OutMaxBytes bounds WS_OUT (DefaultOutMaxBytes). A full stream refuses
	// new commands (discard new): publishers get an error, and nothing
	// stored is dropped to make room.
	OutMaxBytes int64
	// InMaxBytes bounds WS_IN (DefaultInMaxBytes). A full stream drops its
	// oldest events to make room (discard old): the stream feeds backends,
	// and refusing new events would close every client whose message
	// cannot be stored (and refuse every new one) because of what one
	// client wrote. Backends must read within what the bound holds.
	InMaxBytes int64
	// DLQMaxBytes bounds WS_DLQ (DefaultDLQMaxBytes). A full stream drops
	// its oldest dead letters to make room (discard old): the newest are
	// the ones an operator is looking for, and a refused dead letter would
	// be retried by its writer without end or lost all the same.
	DLQMaxBytes int64
}

// Default size bounds of the streams: the outbound log, the inbound events
// and the dead letters.
const (
	DefaultOutMaxBytes = 1 << 30
	DefaultInMaxBytes  = 1 << 30
	DefaultDLQMaxBytes = 256 << 20
)

// jsErrStorageResources is JetStream's "insufficient storage resources
// available": a stream's byte bound does not fit in what the server (or
// the account) has left to reserve.
const jsErrStorageResources jetstream.ErrorCode = 10047

// ErrOldLayout reports an outbound stream of an earlier layout (a work
// queue, or the interest stream of partition consumers) that still holds
// messages.
var ErrOldLayout = errors.New("outbound stream has an earlier layout")

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
	if o.OutMaxBytes <= 0 {
		o.OutMaxBytes = DefaultOutMaxBytes
	}
	if o.InMaxBytes <= 0 {
		o.InMaxBytes = DefaultInMaxBytes
	}
	if o.DLQMaxBytes <= 0 {
		o.DLQMaxBytes = DefaultDLQMaxBytes
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
		// Events for backends: when full, the oldest go to make room, so
		// clients keep being served (see InMaxBytes).
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
		MaxBytes:   o.InMaxBytes,
		MaxAge:     o.InMaxAge,
		Duplicates: o.DuplicateWindow,
		Replicas:   o.Replicas,
		Storage:    jetstream.FileStorage,
	}, {
		Name:        n.StreamOut(),
		Description: "wsbridge outbound commands, partitioned by connection: a log every bridge reads in order",
		Subjects:    n.OutSubjects(),
		// A log: the bridges keep their positions in it (Positions) and
		// trim what every partition has resolved. When it is full it
		// refuses new commands rather than drop unread ones.
		Retention:        jetstream.LimitsPolicy,
		Discard:          jetstream.DiscardNew,
		MaxBytes:         o.OutMaxBytes,
		SubjectTransform: n.OutTransform(o.Partitions),
		MaxAge:           o.OutMaxAge,
		Duplicates:       o.DuplicateWindow,
		Replicas:         o.Replicas,
		Storage:          jetstream.FileStorage,
	}, {
		Name:        n.StreamDLQ(),
		Description: "wsbridge dead letters: outbound commands that could not be delivered",
		Subjects:    []string{n.DeadLetters()},
		// When full, the oldest dead letters make room for new ones.
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
		MaxBytes:   o.DLQMaxBytes,
		MaxAge:     o.DLQMaxAge,
		Duplicates: o.DuplicateWindow,
		Replicas:   o.Replicas,
		Storage:    jetstream.FileStorage,
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
// The outbound stream is a log with the positions of its partitions in the
// bucket Positions. An outbound stream of another layout is converted only
// when nothing in it is left to deliver; otherwise Provision fails with
// ErrOldLayout or ErrPartitionsChanged, saying how to migrate, and changes
// nothing.
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
			if apiErr := (*jetstream.APIError)(nil); errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrStorageResources {
				// The server reserves each stream's byte bound out of its
				// store: say which bounds, and how to fit them.
				return fmt.Errorf("provision stream %s: %w: the streams' byte bounds (%s %d, %s %d, %s %d: --out-max-bytes, --in-max-bytes, --dlq-max-bytes) are reserved out of the NATS server's max_file_store (and the account's storage limit): lower them or raise it",
					cfg.Name, err, n.StreamOut(), o.OutMaxBytes, n.StreamIn(), o.InMaxBytes, n.StreamDLQ(), o.DLQMaxBytes)
			}
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, n.PositionsConfig(o)); err != nil {
		return fmt.Errorf("provision bucket %s: %w", n.Positions(), err)
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

// PositionsConfig is the configuration of the Positions bucket: one key
// per partition, kept until the outbound stream is replaced.
func (n Names) PositionsConfig(o StreamOptions) jetstream.KeyValueConfig {
	o = o.withDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      n.Positions(),
		Description: "wsbridge outbound partitions: position of each in the outbound log",
		History:     1,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
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

// convertOut replaces an outbound stream of another layout (the work queue
// or the interest stream of the earlier releases, or another partition
// count) when nothing in it is left to deliver, and refuses otherwise with
// how to migrate.
func convertOut(ctx context.Context, js jetstream.JetStream, n Names, o StreamOptions) error {
	st, err := js.Stream(ctx, n.StreamOut())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return clearPositions(ctx, js, n)
	}
	if err != nil {
		return fmt.Errorf("provision stream %s: %w", n.StreamOut(), err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("provision stream %s: %w", n.StreamOut(), err)
	}
	old := n.OutPartitions(info.Config)
	log := info.Config.Retention == jetstream.LimitsPolicy
	if log && old == o.Partitions {
		return nil
	}
	if msgs := info.State.Msgs; msgs > 0 {
		if log {
			// A log keeps what was delivered for a while: only what some
			// partition has not resolved stops the change.
			left, err := unresolved(ctx, js, n, old, info)
			if err != nil {
				return fmt.Errorf("provision stream %s: %w", n.StreamOut(), err)
			}
			if left > 0 {
				return fmt.Errorf("%w: %s holds %d commands not yet delivered in %d partitions, %d asked; keep --partitions %d until they are delivered (pause the publishers; `wsbridge partitions` shows each partition's lag), then restart every bridge with --partitions %d",
					ErrPartitionsChanged, n.StreamOut(), left, old, o.Partitions, old, o.Partitions)
			}
		} else {
			return fmt.Errorf("%w: %s holds %d messages for the consumers of an earlier release; let bridges of that release drain it (until `nats stream info %s` shows 0 messages, with publishers paused), then start this one, which converts the empty stream",
				ErrOldLayout, n.StreamOut(), msgs, n.StreamOut())
		}
	}
	// Nothing left to deliver: the retention policy cannot be changed in
	// place, and positions in the old stream mean nothing in a new one;
	// start over.
	if err := js.DeleteStream(ctx, n.StreamOut()); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("provision: replace stream %s: %w", n.StreamOut(), err)
	}
	return clearPositions(ctx, js, n)
}

// clearPositions deletes the Positions bucket, if any: positions belong to
// one outbound stream (each also names the stream's creation time, which a
// bridge checks, so a stale one is never followed).
func clearPositions(ctx context.Context, js jetstream.JetStream, n Names) error {
	if err := js.DeleteKeyValue(ctx, n.Positions()); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("provision: clear %s: %w", n.Positions(), err)
	}
	return nil
}

// unresolved counts the commands of the log at or after the lowest
// position of its partitions: all of them when a partition has none.
func unresolved(ctx context.Context, js jetstream.JetStream, n Names, parts int, info *jetstream.StreamInfo) (uint64, error) {
	state := info.State
	kv, err := js.KeyValue(ctx, n.Positions())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return state.Msgs, nil
	}
	if err != nil {
		return 0, err
	}
	low, err := LowestPosition(ctx, kv, parts, info)
	if err != nil {
		return 0, err
	}
	if low > state.LastSeq {
		return 0, nil
	}
	return state.LastSeq - max(low, state.FirstSeq) + 1, nil
}

// Unresolved is the number of commands in the outbound log at or after the
// lowest position of its partitions: 0 once every command was pushed or
// dead-lettered (the log keeps them for the replay window all the same).
func Unresolved(ctx context.Context, js jetstream.JetStream, n Names) (uint64, error) {
	st, err := js.Stream(ctx, n.StreamOut())
	if err != nil {
		return 0, err
	}
	info := st.CachedInfo()
	return unresolved(ctx, js, n, n.OutPartitions(info.Config), info)
}
