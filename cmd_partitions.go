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
	Backlog   uint64 `json:"backlog"`         // messages not yet delivered to a bridge
	Held      int    `json:"held"`            // delivered, not yet acknowledged
	LagMS     int64  `json:"lagMs"`           // age of the oldest message stored in the partition
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
	fmt.Fprintf(stdout, "%-9s  %-32s  %8s  %6s  %8s\n", "partition", "owner", "backlog", "held", "lag")
	owners := map[string]int{}
	for _, r := range rows {
		owner := r.Owner
		if owner == "" {
			owner = "(none)"
		}
		owners[owner]++
		line := fmt.Sprintf("%-9d  %-32s  %8d  %6d  %8s", r.Partition, owner, r.Backlog, r.Held, (time.Duration(r.LagMS) * time.Millisecond).String())
		if r.Error != "" {
			line += "  " + r.Error
		}
		fmt.Fprintln(stdout, line)
	}
	fmt.Fprintf(stderr, "%d partitions, %d bridges alive, %d owners\n", len(rows), members, len(owners))
	return 0
}

// partitionRows reads the outbound stream's partition count, the leases and
// each partition consumer's state.
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
	rows := make([]partitionRow, 0, count)
	for p := 0; p < count; p++ {
		r := partitionRow{Partition: p, Owner: owners[p]}
		cons, err := js.Consumer(ctx, n.StreamOut(), n.PartitionConsumer(p))
		if err == nil {
			// js.Consumer has just fetched the consumer's info.
			if info := cons.CachedInfo(); info != nil {
				r.Backlog, r.Held = info.NumPending, info.NumAckPending
				if r.Backlog+uint64(r.Held) > 0 {
					// The partition's oldest stored direct command: acked
					// ones are removed at once, so it is waiting.
					m, gerr := st.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(n.PartitionFilter(p)))
					if gerr == nil {
						r.LagMS = time.Since(m.Time).Milliseconds()
					}
				}
			}
		}
		if err == nil {
			// The fan-outs this partition has still to push.
			var fcons jetstream.Consumer
			if fcons, err = js.Consumer(ctx, n.StreamOut(), n.FanOutConsumer(p)); err == nil {
				if info := fcons.CachedInfo(); info != nil {
					r.Backlog += info.NumPending
					r.Held += info.NumAckPending
				}
			}
		}
		if err != nil {
			r.Error = err.Error()
		}
		rows = append(rows, r)
	}
	return rows, members, nil
}
