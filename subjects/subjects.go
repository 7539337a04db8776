package subjects

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultPrefix is the subject prefix used when none is configured.
const DefaultPrefix = "ws"

// ErrBadSubject reports a subject that is not part of the wsbridge contract.
var ErrBadSubject = errors.New("bad subject")

// ErrBadName reports a prefix, group or user name that cannot be a subject token.
var ErrBadName = errors.New("bad name")

// Direction is the first token after the prefix.
type Direction string

// The directions of SPEC §3.
const (
	In   Direction = "in"   // events published by the functions
	Out  Direction = "out"  // commands published by business services
	DLQ  Direction = "dlq"  // dead letters republished by the bridge
	Auth Direction = "auth" // connect authorization requests
	API  Direction = "api"  // request-reply API served by the bridge
)

// Kind is the second token after the prefix: the event or command.
type Kind string

// Inbound kinds.
const (
	KindConnect    Kind = "connect"
	KindMessage    Kind = "message"
	KindDisconnect Kind = "disconnect"
)

// Outbound kinds (also the kinds of dead letters).
const (
	KindSend      Kind = "send"
	KindClose     Kind = "close"
	KindBroadcast Kind = "broadcast"
	KindGroup     Kind = "group"
	KindUser      Kind = "user"
)

// KindInvalid names dead letters of outbound messages whose subject could not
// be parsed at all.
const KindInvalid Kind = "invalid"

// Names builds every subject, stream, bucket and consumer name under one
// prefix. The zero value is not usable; use New.
type Names struct {
	prefix string
	upper  string
}

// New returns the names under prefix ("" means DefaultPrefix). A prefix is one
// or more dot-separated tokens without wildcards or white space.
func New(prefix string) (Names, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if len(prefix) > MaxPrefixLen {
		return Names{}, fmt.Errorf("prefix %q: %w: %d bytes, limit %d", clip(prefix), ErrBadName, len(prefix), MaxPrefixLen)
	}
	for _, tok := range strings.Split(prefix, ".") {
		if err := checkName(tok); err != nil {
			return Names{}, fmt.Errorf("prefix %q: %w", clip(prefix), err)
		}
	}
	up := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, prefix)
	return Names{prefix: prefix, upper: up}, nil
}

// MustNew is New for prefixes known to be valid; it panics on a bad prefix.
func MustNew(prefix string) Names {
	n, err := New(prefix)
	if err != nil {
		panic(err)
	}
	return n
}

// Prefix returns the subject prefix.
func (n Names) Prefix() string { return n.prefix }

func (n Names) join(parts ...string) string {
	return n.prefix + "." + strings.Join(parts, ".")
}

// Connect is P.in.connect.T.
func (n Names) Connect(token string) string { return n.join(string(In), string(KindConnect), token) }

// Message is P.in.message.T.
func (n Names) Message(token string) string { return n.join(string(In), string(KindMessage), token) }

// Disconnect is P.in.disconnect.T.
func (n Names) Disconnect(token string) string {
	return n.join(string(In), string(KindDisconnect), token)
}

// Inbound is P.in.> , every inbound event.
func (n Names) Inbound() string { return n.join(string(In), ">") }

// InboundKind is P.in.<kind>.*, every inbound event of one kind.
func (n Names) InboundKind(k Kind) string { return n.join(string(In), string(k), "*") }

// Send is P.out.send.T.
func (n Names) Send(token string) string { return n.join(string(Out), string(KindSend), token) }

// Close is P.out.close.T.
func (n Names) Close(token string) string { return n.join(string(Out), string(KindClose), token) }

// Broadcast is P.out.broadcast.
func (n Names) Broadcast() string { return n.join(string(Out), string(KindBroadcast)) }

// Group is P.out.group.G. The group must be a valid subject token (see ValidName).
func (n Names) Group(group string) string { return n.join(string(Out), string(KindGroup), group) }

// User is P.out.user.U. The user id must be a valid subject token (see ValidName).
func (n Names) User(user string) string { return n.join(string(Out), string(KindUser), user) }

// Outbound is P.out.>, every outbound command.
func (n Names) Outbound() string { return n.join(string(Out), ">") }

// DeadLetter is P.dlq.<kind>.T, or P.dlq.<kind> when there is no token.
func (n Names) DeadLetter(k Kind, token string) string {
	if token == "" {
		return n.join(string(DLQ), string(k))
	}
	return n.join(string(DLQ), string(k), token)
}

// DeadLetters is P.dlq.>, every dead letter.
func (n Names) DeadLetters() string { return n.join(string(DLQ), ">") }

// AuthConnect is P.auth.connect, the connect-authorization request subject.
func (n Names) AuthConnect() string { return n.join(string(Auth), "connect") }

// ConnGet is P.api.conn.get: one registry record by token.
func (n Names) ConnGet() string { return n.join(string(API), "conn", "get") }

// ConnList is P.api.conn.list: registry records, optionally filtered.
func (n Names) ConnList() string { return n.join(string(API), "conn", "list") }

// GroupAdd is P.api.group.add: add a connection to groups.
func (n Names) GroupAdd() string { return n.join(string(API), "group", "add") }

// GroupRemove is P.api.group.remove: remove a connection from groups.
func (n Names) GroupRemove() string { return n.join(string(API), "group", "remove") }

// APIAll is P.api.>, every API subject.
func (n Names) APIAll() string { return n.join(string(API), ">") }

// StreamIn is the inbound stream's name (WS_IN for prefix ws).
func (n Names) StreamIn() string { return n.upper + "_IN" }

// StreamOut is the outbound stream's name (WS_OUT).
func (n Names) StreamOut() string { return n.upper + "_OUT" }

// StreamDLQ is the dead-letter stream's name (WS_DLQ).
func (n Names) StreamDLQ() string { return n.upper + "_DLQ" }

// Bucket is the connection registry's KV bucket name (WS_CONNS).
func (n Names) Bucket() string { return n.upper + "_CONNS" }

// Consumer is the base name of the outbound partition consumers (WS_BRIDGE;
// partition n's is PartitionConsumer(n)), and the name of the single
// consumer every bridge shared in the previous, unpartitioned layout.
func (n Names) Consumer() string { return n.upper + "_BRIDGE" }

// Subject is a parsed wsbridge subject.
type Subject struct {
	Dir   Direction
	Kind  Kind
	Token string // connection token, for per-connection subjects
	Name  string // group or user name for group/user subjects
}

// ConnID decodes the subject's connection token.
func (s Subject) ConnID() (string, error) { return ConnID(s.Token) }

// Parse splits a subject under the prefix into its parts, checking that it is
// one the contract defines and that its connection token decodes.
func (n Names) Parse(subject string) (Subject, error) {
	rest, ok := strings.CutPrefix(subject, n.prefix+".")
	if !ok {
		return Subject{}, fmt.Errorf("%w %q: not under prefix %q", ErrBadSubject, clip(subject), n.prefix)
	}
	parts := strings.Split(rest, ".")
	bad := func(why string) (Subject, error) {
		return Subject{}, fmt.Errorf("%w %q: %s", ErrBadSubject, clip(subject), why)
	}
	if len(parts) < 2 {
		return bad("too few tokens")
	}
	s := Subject{Dir: Direction(parts[0]), Kind: Kind(parts[1])}
	withToken := func() (Subject, error) {
		if len(parts) != 3 {
			return bad("want exactly one connection token after " + string(s.Kind))
		}
		if _, err := ConnID(parts[2]); err != nil {
			return Subject{}, fmt.Errorf("%w %q: %w", ErrBadSubject, clip(subject), err)
		}
		s.Token = parts[2]
		return s, nil
	}
	withName := func() (Subject, error) {
		if len(parts) != 3 || checkName(parts[2]) != nil {
			return bad("want exactly one " + string(s.Kind) + " name")
		}
		s.Name = parts[2]
		return s, nil
	}
	switch s.Dir {
	case In:
		switch s.Kind {
		case KindConnect, KindMessage, KindDisconnect:
			return withToken()
		}
	case Out:
		switch s.Kind {
		case KindSend, KindClose:
			return withToken()
		case KindBroadcast:
			if len(parts) != 2 {
				return bad("broadcast takes no further tokens")
			}
			return s, nil
		case KindGroup, KindUser:
			return withName()
		}
	case DLQ:
		if len(parts) == 2 {
			return s, nil
		}
		return withToken()
	case Auth:
		if len(parts) == 2 && s.Kind == "connect" {
			return s, nil
		}
	case API:
		if len(parts) == 3 {
			switch parts[1] + "." + parts[2] {
			case "conn.get", "conn.list", "group.add", "group.remove":
				s.Name = parts[2]
				return s, nil
			}
		}
	}
	return bad("unknown " + string(s.Dir) + " subject")
}

// ValidName reports whether a group or user name can be used as one subject
// token: non-empty, printable, no '.', '*', '>' or white space.
func ValidName(name string) error { return checkName(name) }

func checkName(tok string) error {
	if tok == "" {
		return fmt.Errorf("%w: empty token", ErrBadName)
	}
	if len(tok) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrBadName, len(tok), MaxNameLen)
	}
	for _, r := range tok {
		if r <= ' ' || r == 0x7f || r == '.' || r == '*' || r == '>' {
			return fmt.Errorf("%w %q: contains %q", ErrBadName, clip(tok), r)
		}
	}
	return nil
}
