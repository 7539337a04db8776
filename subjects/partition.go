package subjects

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Partitioned outbound layout.
//
// Publishers keep publishing P.out.send.T, P.out.close.T, P.out.broadcast,
// P.out.group.G and P.out.user.U. The outbound stream rewrites, on input, a
// subject of two tokens after P.out into P.out.<kind>.<n>.<name>, where n is
// Partition(name, count) computed by the server's {{partition}} function
// (FNV-1a 32 of the token, modulo the count). Every subject of one connection
// therefore lands in one partition, which one bridge works at a time, while
// broadcast, group and user commands are read by every partition's consumer
// (each pushes them to its own connections), in stream order with the direct
// sends.

// DefaultPartitions is the default number of outbound partitions: room for
// many bridges without re-partitioning.
const DefaultPartitions = 32

// MaxPartitions bounds the partition count: each partition is a consumer
// every bridge watches, with its own pulls and lease.
const MaxPartitions = 256

// Partition is the partition of a connection token (or group or user name)
// among count partitions: FNV-1a 32 of the token modulo count, the server's
// {{partition(count, …)}} subject-transform function, so the bridge and the
// stream agree.
func Partition(token string, count int) int {
	if count <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(token))
	return int(h.Sum32() % uint32(count))
}

// OutTransform is the outbound stream's subject transform for count
// partitions: P.out.K.X becomes P.out.K.<partition of X>.X.
func (n Names) OutTransform(count int) *jetstream.SubjectTransformConfig {
	return &jetstream.SubjectTransformConfig{
		Source:      n.join(string(Out), "*", "*"),
		Destination: n.join(string(Out), "{{wildcard(1)}}", fmt.Sprintf("{{partition(%d,2)}}", count), "{{wildcard(2)}}"),
	}
}

// OutSubjects are the subjects the partitioned outbound stream captures:
// P.out.X (broadcast, and malformed one-token commands the bridge
// dead-letters), P.out.X.Y (the per-connection, group and user commands,
// rewritten by OutTransform) and P.out.X.Y.Z.> (malformed, dead-lettered).
// Not P.out.X.Y.Z: that is the stored, partitioned form, which a publisher
// must not be able to forge.
func (n Names) OutSubjects() []string {
	return []string{n.join(string(Out), "*"), n.join(string(Out), "*", "*"), n.join(string(Out), "*", "*", "*", ">")}
}

// PartitionFilter is the filter subject of partition p's consumer: every
// command the stream stored in partition p (P.out.*.<p>.*). One filter
// subject, so the server finds the partition's messages through its subject
// index: a consumer with several filter subjects walks the stream message by
// message for each subject it matches, which made a backlog drain cost
// grow with the number of connections.
//
// The group and user commands stored in partition p match it too; the
// partition's fan-out consumer is the one that pushes them, the bridge only
// lets go of this copy.
func (n Names) PartitionFilter(p int) string {
	return n.join(string(Out), "*", strconv.Itoa(p), "*")
}

// FanOutFilters are the filter subjects of partition p's fan-out consumer:
// every broadcast, group and user command (each partition pushes those to
// its own connections). Partition 0's also takes the malformed subjects of
// four or more tokens after P.out, so that nothing the stream stores is left
// without a consumer. A partition's bridge reads both its consumers and
// merges them in stream order (bridge/intake.go).
func (n Names) FanOutFilters(p int) []string {
	f := []string{
		n.join(string(Out), "*"),
		n.join(string(Out), string(KindGroup), "*", "*"),
		n.join(string(Out), string(KindUser), "*", "*"),
	}
	if p == 0 {
		f = append(f, n.join(string(Out), "*", "*", "*", ">"))
	}
	return f
}

// OutLog is where the outbound stream republishes the headers of every
// message it stores, in stream order: P.outlog.<stored subject after
// P.out>, headers Nats-Subject, Nats-Sequence and Nats-Last-Sequence. The
// bridges follow it to merge a partition's two consumers without a round
// trip (bridge/outlog.go). Nothing publishes there but the stream.
func (n Names) OutLog() string { return n.join(string(Out)+"log", ">") }

// OutLogRePublish is the outbound stream's republish directive that feeds
// OutLog.
func (n Names) OutLogRePublish() *jetstream.RePublish {
	return &jetstream.RePublish{Source: n.join(string(Out), ">"), Destination: n.OutLog(), HeadersOnly: true}
}

// FanOutConsumer is the durable fan-out consumer of outbound partition p
// (WS_BRIDGE_7_FANOUT).
func (n Names) FanOutConsumer(p int) string { return n.PartitionConsumer(p) + "_FANOUT" }

// PartitionConsumer is the durable consumer of outbound partition p
// (WS_BRIDGE_7).
func (n Names) PartitionConsumer(p int) string { return n.Consumer() + "_" + strconv.Itoa(p) }

// Leases is the KV bucket in which bridges announce themselves and hold the
// leases of the partitions they work (WS_BRIDGES).
func (n Names) Leases() string { return n.upper + "_BRIDGES" }

// Keys of the Leases bucket: m.<id>, a bridge's membership (rewritten while
// it lives), and p.<n>, the lease of partition n (its owner's id).

// MemberKey is the key of bridge id's membership in the Leases bucket.
func MemberKey(id string) string { return "m." + id }

// MemberKeyID returns the bridge a Leases key is the membership of.
func MemberKeyID(key string) (id string, ok bool) { return strings.CutPrefix(key, "m.") }

// LeaseKey is the key of partition p's lease in the Leases bucket.
func LeaseKey(p int) string { return "p." + strconv.Itoa(p) }

// LeaseKeyPartition returns the partition a Leases key is the lease of.
func LeaseKeyPartition(key string) (p int, ok bool) {
	n, ok := strings.CutPrefix(key, "p.")
	if !ok {
		return 0, false
	}
	p, err := strconv.Atoi(n)
	return p, err == nil && p >= 0
}

// Stored is an outbound command as the partitioned stream stores it.
type Stored struct {
	Subject
	// Partition is the partition the stream stored it in; -1 for a
	// broadcast, which every partition reads.
	Partition int
	// Original is the subject the publisher used.
	Original string
}

// ParseStored parses a subject of the partitioned outbound stream. It
// returns the original subject (as best it can) also with the error, for
// dead letters.
func (n Names) ParseStored(subject string) (Stored, error) {
	st := Stored{Partition: -1, Original: subject}
	rest, ok := strings.CutPrefix(subject, n.prefix+"."+string(Out)+".")
	if !ok {
		return st, fmt.Errorf("%w %q: not an outbound subject", ErrBadSubject, clip(subject))
	}
	parts := strings.Split(rest, ".")
	if len(parts) == 3 {
		st.Original = n.join(string(Out), parts[0], parts[2])
		p, err := strconv.Atoi(parts[1])
		if err != nil || p < 0 || strconv.Itoa(p) != parts[1] {
			return st, fmt.Errorf("%w %q: no partition number", ErrBadSubject, clip(subject))
		}
		st.Partition = p
	}
	s, err := n.Parse(st.Original)
	if err != nil {
		return st, err
	}
	if s.Dir != Out {
		return st, fmt.Errorf("%w %q: not an outbound subject", ErrBadSubject, clip(subject))
	}
	st.Subject = s
	return st, nil
}
