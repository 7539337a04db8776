package subjects

import (
	"errors"
	"fmt"
)

// Limits on input that ends up in a subject, a KV key or a header.
//
// A NATS server refuses a protocol line longer than its max_control_line
// (4 KiB by default) and closes, for good, the connection that sent it: one
// request or message carrying an over-long connection token would take a
// whole process off NATS. Every subject wsbridge builds from input is
// checked against these limits first; with them the longest derived subject
// ($KV.<bucket>.<token>, P.dlq.<kind>.<token>) stays below 500 bytes.
//
// They are part of the contract, not per-process settings: every writer (the
// functions, the bridge's API, the ops commands) and every reader must agree
// on them, so they are constants rather than flags.
const (
	// MaxConnIDLen is the longest secConnectionID accepted, in bytes.
	// API Gateway's ids are a few dozen bytes.
	MaxConnIDLen = 256
	// MaxTokenLen is the longest connection token: the unpadded base64url
	// of a MaxConnIDLen-byte id.
	MaxTokenLen = (MaxConnIDLen*8 + 5) / 6
	// MaxNameLen is the longest group or user name, in bytes.
	MaxNameLen = 256
	// MaxGroups is how many groups one connection may be in; an
	// authorizer reply or a group.add that would pass it is refused.
	MaxGroups = 100
	// MaxExcludeLen is the largest Ws-Exclude header value, in bytes
	// (about 750 typical tokens; a NATS server takes 64 KiB of headers at
	// most); a fan-out with a longer one is dead-lettered as invalid.
	MaxExcludeLen = 32 << 10
	// MaxPrefixLen is the longest subject prefix (a configuration value).
	MaxPrefixLen = 64
)

// ErrTooManyGroups reports a group list longer than MaxGroups.
var ErrTooManyGroups = errors.New("too many groups")

// CheckConnID reports whether a secConnectionID can be carried: non-empty,
// at most MaxConnIDLen bytes, no control bytes (it travels as a header
// value).
func CheckConnID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty connection id", ErrBadToken)
	}
	if len(id) > MaxConnIDLen {
		return fmt.Errorf("%w: connection id of %d bytes, more than the limit %d", ErrBadToken, len(id), MaxConnIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < ' ' || c == 0x7f {
			return fmt.Errorf("%w: connection id holds control byte %#x", ErrBadToken, c)
		}
	}
	return nil
}

// Groups returns groups as a set: each valid name once, in first-seen
// order, at most MaxGroups. Every writer of a registry record passes its
// groups through it, so that removing a group once removes it.
func Groups(groups []string) ([]string, error) {
	out := make([]string, 0, min(len(groups), MaxGroups))
	seen := make(map[string]struct{}, min(len(groups), MaxGroups))
	for _, g := range groups {
		if _, dup := seen[g]; dup {
			continue
		}
		if err := ValidName(g); err != nil {
			return nil, fmt.Errorf("group: %w", err)
		}
		if len(out) == MaxGroups {
			return nil, fmt.Errorf("%w: more than %d", ErrTooManyGroups, MaxGroups)
		}
		seen[g] = struct{}{}
		out = append(out, g)
	}
	return out, nil
}
