package subjects

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Position is where a partition stands in the outbound log: every command
// below Next is resolved (pushed, or dead-lettered) except those listed in
// Pending. The partition's owner rewrites it with a compare-and-set on its
// revision, at most every few hundred milliseconds and at every hand-off;
// the next owner starts from it.
type Position struct {
	// Next is the first stream sequence not yet taken.
	Next uint64 `json:"next"`
	// Pending are the commands below Next that were taken and not yet
	// resolved, in stream order.
	Pending []PendingCommand `json:"pending,omitempty"`
	// Stream is the creation time of the outbound stream the position
	// belongs to: a position of a stream since replaced means nothing.
	Stream time.Time `json:"stream"`
	// Owner is the bridge that wrote it, and At when (its clock): for
	// operators only.
	Owner string    `json:"owner,omitempty"`
	At    time.Time `json:"at"`
}

// PendingCommand is a command taken and not yet resolved. Tokens, when
// set, are the connections of a fan-out still to push to; empty means every
// target of the partition.
type PendingCommand struct {
	Seq    uint64   `json:"seq"`
	Tokens []string `json:"tokens,omitempty"`
}

// Low is the lowest sequence the position leaves unresolved.
func (p Position) Low() uint64 {
	if len(p.Pending) > 0 && p.Pending[0].Seq < p.Next {
		return p.Pending[0].Seq
	}
	return p.Next
}

// DecodePosition parses a Positions bucket value.
func DecodePosition(b []byte) (Position, error) {
	var p Position
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("position: %w", err)
	}
	return p, nil
}

// Encode is the position as stored.
func (p Position) Encode() []byte {
	b, _ := json.Marshal(p) // plain fields: cannot fail
	return b
}

// ReadPosition returns partition p's position and its revision; a missing
// key, or one of another stream than created, reads as the start of the
// stream (first), with ok false.
func ReadPosition(ctx context.Context, kv jetstream.KeyValue, p int, created time.Time, first uint64) (pos Position, rev uint64, ok bool, err error) {
	e, err := kv.Get(ctx, PositionKey(p))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Position{Next: first, Stream: created}, 0, false, nil
	}
	if err != nil {
		return Position{}, 0, false, err
	}
	pos, err = DecodePosition(e.Value())
	if err != nil || !pos.Stream.Equal(created) {
		return Position{Next: first, Stream: created}, e.Revision(), false, nil
	}
	return pos, e.Revision(), true, nil
}

// LowestPosition is the lowest sequence any of the parts partitions leaves
// unresolved in the stream info describes: everything below it is resolved
// by every partition.
func LowestPosition(ctx context.Context, kv jetstream.KeyValue, parts int, info *jetstream.StreamInfo) (uint64, error) {
	low := info.State.LastSeq + 1
	for p := 0; p < parts; p++ {
		pos, _, _, err := ReadPosition(ctx, kv, p, info.Created, info.State.FirstSeq)
		if err != nil {
			return 0, fmt.Errorf("position of partition %d: %w", p, err)
		}
		low = min(low, pos.Low())
	}
	return low, nil
}
