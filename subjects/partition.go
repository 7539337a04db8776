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
// therefore lands in one partition, which one bridge works at a time. The
// stream is a log every bridge reads in order: a bridge takes the direct
// commands of the partitions it owns, and of every broadcast, group and user
// command the targets in its partitions, so a fan-out keeps its place among
// a connection's direct sends.

// DefaultPartitions is the default number of outbound partitions: room for
// many bridges without re-partitioning.
const DefaultPartitions = 32

// MaxPartitions bounds the partition count: each partition has a lease and
// a position every bridge watches.
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

// PartitionSubjects are the stored subjects of everything partition p
// reads from the outbound log: its sends and closes, and every broadcast,
// group and user command (and the malformed P.out.X). They do not overlap,
// so they can filter one consumer (for counting: the bridges read the
// whole log).
func (n Names) PartitionSubjects(p int) []string {
	ps := strconv.Itoa(p)
	return []string{
		n.join(string(Out), string(KindSend), ps, "*"),
		n.join(string(Out), string(KindClose), ps, "*"),
		n.join(string(Out), "*"),
		n.join(string(Out), string(KindGroup), "*", "*"),
		n.join(string(Out), string(KindUser), "*", "*"),
	}
}

// Positions is the KV bucket of the partitions' positions in the outbound
// log (WS_POSITIONS): key p.<n> (PositionKey), value a Position. Written
// by the partition's owner with a compare-and-set on its revision.
func (n Names) Positions() string { return n.upper + "_POSITIONS" }

// PositionKey is the key of partition p's position in the Positions bucket.
func PositionKey(p int) string { return "p." + strconv.Itoa(p) }

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
