package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// partitionRow is one line of `wsbridge partitions`.
type partitionRow struct {
	Partition int    `json:"partition"`
	Owner     string `json:"owner"`           // bridge id holding the lease, "" when free
	Position  uint64 `json:"position"`        // lowest sequence of the log it has not resolved
	Backlog   uint64 `json:"backlog"`         // its commands (and fan-outs) in the log from its position on
	Held      int    `json:"held"`            // taken, not yet resolved, as of its last commit
	LagMS     int64  `json:"lagMs"`           // age of the log entry at its position (0 when it is at the end)
	Error     string `json:"error,omitempty"` // why a figure is missing
}

func runPartitions(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newOpsFlags("partitions", "\n\nShow each outbound partition's owner, backlog and lag.", stderr)
	asJSON := fs.Bool("json", false, "print JSON, one object per partition")
	if err := parseFlags(fs, args, nil); err != nil {
		return exitCode(err)
	}
	nc, c, err := o.client()
	if err != nil {
		return fail(stderr, "partitions", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	rows, members, err := partitionRows(ctx, c.JetStream(), c.Names())
	if err != nil {
		return fail(stderr, "partitions", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, r := range rows {
			_ = enc.Encode(r)
		}
		return 0
	}
	fmt.Fprintf(stdout, "%-9s  %-32s  %10s  %8s  %6s  %8s\n", "partition", "owner", "position", "backlog", "held", "lag")
	owners := map[string]int{}
	for _, r := range rows {
		owner := r.Owner
		if owner == "" {
			owner = "(none)"
		}
		owners[owner]++
		line := fmt.Sprintf("%-9d  %-32s  %10d  %8d  %6d  %8s", r.Partition, owner, r.Position, r.Backlog, r.Held, (time.Duration(r.LagMS) * time.Millisecond).String())
		if r.Error != "" {
			line += "  " + r.Error
		}
		fmt.Fprintln(stdout, line)
	}
	fmt.Fprintf(stderr, "%d partitions, %d bridges alive, %d owners\n", len(rows), members, len(owners))
	return 0
}

// partitionRows reads the outbound stream's partition count, the leases and
// each partition's position.
func partitionRows(ctx context.Context, js jetstream.JetStream, n subjects.Names) ([]partitionRow, int, error) {
	st, err := js.Stream(ctx, n.StreamOut())
	if err != nil {
		return nil, 0, fmt.Errorf("stream %s: %w", n.StreamOut(), err)
	}
	count := n.OutPartitions(st.CachedInfo().Config)
	if count == 0 {
		return nil, 0, fmt.Errorf("stream %s is not partitioned (the previous layout): start a current bridge to convert it", n.StreamOut())
	}
	owners := map[int]string{}
	members := 0
	kv, err := js.KeyValue(ctx, n.Leases())
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, 0, fmt.Errorf("bucket %s: %w", n.Leases(), err)
	}
	if kv != nil {
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			return nil, 0, fmt.Errorf("bucket %s: %w", n.Leases(), err)
		}
		for k := range keys.Keys() {
			if _, ok := subjects.MemberKeyID(k); ok {
				members++
				continue
			}
			p, ok := subjects.LeaseKeyPartition(k)
			if !ok {
				continue
			}
			if e, err := kv.Get(ctx, k); err == nil {
				owners[p] = string(e.Value())
			}
		}
	}
	info := st.CachedInfo()
	first := info.State.FirstSeq
	if first == 0 {
		first = info.State.LastSeq + 1
	}
	pkv, err := js.KeyValue(ctx, n.Positions())
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, 0, fmt.Errorf("bucket %s: %w", n.Positions(), err)
	}
	rows := make([]partitionRow, 0, count)
	for p := 0; p < count; p++ {
		r := partitionRow{Partition: p, Owner: owners[p], Position: first}
		if pkv != nil {
			pos, _, _, err := subjects.ReadPosition(ctx, pkv, p, info.Created, first)
			if err != nil {
				r.Error = err.Error()
				rows = append(rows, r)
				continue
			}
			r.Position, r.Held = max(pos.Low(), first), len(pos.Pending)
		}
		if r.Position <= info.State.LastSeq {
			if m, err := st.GetMsg(ctx, r.Position); err == nil {
				r.LagMS = time.Since(m.Time).Milliseconds()
			}
			backlog, err := partitionBacklog(ctx, js, n, p, r.Position)
			if err != nil {
				r.Error = err.Error()
			}
			r.Backlog = backlog
		}
		rows = append(rows, r)
	}
	return rows, members, nil
}

// partitionBacklog counts partition p's commands in the log from seq on:
// its sends and closes and every fan-out (a short-lived consumer's count).
func partitionBacklog(ctx context.Context, js jetstream.JetStream, n subjects.Names, p int, seq uint64) (uint64, error) {
	c, err := js.CreateConsumer(ctx, n.StreamOut(), jetstream.ConsumerConfig{
		FilterSubjects:    n.PartitionSubjects(p),
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       seq,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: 5 * time.Second,
		MemoryStorage:     true,
		Replicas:          1,
	})
	if err != nil {
		return 0, fmt.Errorf("count backlog: %w", err)
	}
	defer func() { _ = js.DeleteConsumer(context.Background(), n.StreamOut(), c.CachedInfo().Name) }()
	return c.CachedInfo().NumPending, nil
}
