package bridge

import (
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// index is the in-memory view of the registry bucket used to expand
// broadcast, group and user sends without a KV round trip per message. It
// keeps only what fan-out needs (user and groups); full records are read
// from the bucket on demand (the API's conn.get and conn.list).
//
// It is laid out for a registry of 100,000s of connections: user and group
// names are interned (stored once, however many connections share them), a
// connection in a single group shares that group's one-element slice, and
// member sets start as small slices (most users have one or two
// connections) and become maps only when they grow. A map per user costs
// ~200 bytes; the slice costs 16 per member.
type index struct {
	mu      sync.RWMutex
	conns   map[string]conn
	byGroup map[string]*members
	byUser  map[string]*members
	// holders names, for the few connections whose resumable session
	// moved to another gateway instance than the one their id names,
	// the instance holding it (the record's "instance").
	holders  map[string]string
	nholders atomic.Int64 // len(holders), read without the lock
}

type conn struct {
	user    string   // interned; "" when the record has none
	groups  []string // interned names; read only (may be shared)
	written int64    // when the record was last written (Unix ns; 0 unknown), for refreshes
}

// members is the set of tokens sharing a user or group.
type members struct {
	name  string   // the interned name
	one   []string // []string{name}, shared by the connections in this group only (groups only)
	small []string // the members while few
	big   map[string]struct{}
}

// smallSet is the size up to which a member set is a slice: a linear scan
// of a few strings is cheaper than hashing, and far smaller than a map.
const smallSet = 32

func (s *members) add(token string) {
	if s.big != nil {
		s.big[token] = struct{}{}
		return
	}
	if slices.Contains(s.small, token) {
		return
	}
	if len(s.small) < smallSet {
		s.small = append(s.small, token)
		return
	}
	s.big = make(map[string]struct{}, 2*smallSet)
	for _, t := range s.small {
		s.big[t] = struct{}{}
	}
	s.big[token] = struct{}{}
	s.small = nil
}

func (s *members) remove(token string) {
	if s.big != nil {
		delete(s.big, token)
		return
	}
	if i := slices.Index(s.small, token); i >= 0 {
		last := len(s.small) - 1
		s.small[i] = s.small[last]
		s.small[last] = ""
		s.small = s.small[:last]
	}
}

func (s *members) len() int {
	if s.big != nil {
		return len(s.big)
	}
	return len(s.small)
}

// appendTo appends the members not in exclude to out.
func (s *members) appendTo(out []string, exclude map[string]bool) []string {
	if s.big != nil {
		for t := range s.big {
			if !exclude[t] {
				out = append(out, t)
			}
		}
		return out
	}
	for _, t := range s.small {
		if !exclude[t] {
			out = append(out, t)
		}
	}
	return out
}

// record is the part of a registry value the index reads.
type record struct {
	UserID   string   `json:"userId"`
	Groups   []string `json:"groups"`
	Instance string   `json:"instance"`
}

func newIndex() *index {
	return &index{
		conns:   map[string]conn{},
		byGroup: map[string]*members{},
		byUser:  map[string]*members{},
		holders: map[string]string{},
	}
}

// put indexes a registry value; a value that does not decode is indexed
// without user and groups, so broadcast still reaches the connection.
func (x *index) put(token string, value []byte) { x.putAt(token, value, time.Time{}) }

// putAt is put for a record written at written (the KV entry's Created).
func (x *index) putAt(token string, value []byte, written time.Time) {
	var r record
	_ = json.Unmarshal(value, &r)
	var at int64
	if !written.IsZero() {
		at = written.UnixNano()
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if r.Instance != "" {
		x.holders[strings.Clone(token)] = strings.Clone(r.Instance)
	} else if len(x.holders) > 0 {
		delete(x.holders, token)
	}
	x.nholders.Store(int64(len(x.holders)))
	old, had := x.conns[token]
	if had {
		if old.user == r.UserID && slices.Equal(old.groups, r.Groups) {
			// A rewrite that changes nothing else the index keeps (a
			// refresh): only the write time moves.
			old.written = max(old.written, at)
			x.conns[token] = old
			return
		}
		x.removeLocked(token)
	}
	// The watcher's key is a slice of the whole message subject; a copy
	// does not keep that alive.
	token = strings.Clone(token)
	c := conn{written: at}
	if r.UserID != "" {
		c.user = addTo(x.byUser, r.UserID, token).name
	}
	switch len(r.Groups) {
	case 0:
	case 1:
		s := addTo(x.byGroup, r.Groups[0], token)
		if s.one == nil {
			s.one = []string{s.name}
		}
		c.groups = s.one
	default:
		c.groups = make([]string, 0, len(r.Groups))
		var seen map[string]bool // past smallSet groups: linear, not quadratic
		if len(r.Groups) > smallSet {
			seen = make(map[string]bool, len(r.Groups))
		}
		for _, g := range r.Groups {
			if seen != nil {
				if seen[g] {
					continue
				}
				seen[g] = true
			} else if slices.Contains(c.groups, g) {
				continue // a duplicate must not be removed twice
			}
			c.groups = append(c.groups, addTo(x.byGroup, g, token).name)
		}
	}
	x.conns[token] = c
}

// remove forgets token and reports whether the index held it.
func (x *index) remove(token string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.holders) > 0 {
		delete(x.holders, token)
		x.nholders.Store(int64(len(x.holders)))
	}
	return x.removeLocked(token)
}

// holder returns the gateway instance holding token's resumed session when
// it is not the one its id names ("" otherwise).
func (x *index) holder(token string) string {
	if x.nholders.Load() == 0 {
		return "" // the common case, without the lock
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.holders[token]
}

// written returns when token's record was last written (zero when unknown)
// and whether the index holds token.
func (x *index) written(token string) (time.Time, bool) {
	x.mu.RLock()
	c, ok := x.conns[token]
	x.mu.RUnlock()
	if !ok || c.written == 0 {
		return time.Time{}, ok
	}
	return time.Unix(0, c.written), true
}

// touch records that token's record was rewritten at t, if still indexed.
func (x *index) touch(token string, t time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if c, ok := x.conns[token]; ok && t.UnixNano() > c.written {
		c.written = t.UnixNano()
		x.conns[token] = c
	}
}

func (x *index) removeLocked(token string) bool {
	old, ok := x.conns[token]
	if !ok {
		return false
	}
	delete(x.conns, token)
	if old.user != "" {
		removeFrom(x.byUser, old.user, token)
	}
	for _, g := range old.groups {
		removeFrom(x.byGroup, g, token)
	}
	return true
}

// addTo adds token to the set of key, creating it (and interning key) when
// needed, and returns the set.
func addTo(m map[string]*members, key, token string) *members {
	s := m[key]
	if s == nil {
		name := strings.Clone(key)
		s = &members{name: name}
		m[name] = s
	}
	s.add(token)
	return s
}

func removeFrom(m map[string]*members, key, token string) {
	if s := m[key]; s != nil {
		s.remove(token)
		if s.len() == 0 {
			delete(m, key)
		}
	}
}

func (x *index) size() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.conns)
}

// all returns every token, sorted so a fan-out's order is reproducible.
func (x *index) all(exclude map[string]bool) []string {
	x.mu.RLock()
	out := make([]string, 0, len(x.conns))
	for t := range x.conns {
		if !exclude[t] {
			out = append(out, t)
		}
	}
	x.mu.RUnlock()
	sort.Strings(out)
	return out
}

func (x *index) group(g string, exclude map[string]bool) []string {
	return x.members(x.byGroup, g, exclude)
}

func (x *index) user(u string, exclude map[string]bool) []string {
	return x.members(x.byUser, u, exclude)
}

func (x *index) members(m map[string]*members, key string, exclude map[string]bool) []string {
	x.mu.RLock()
	var out []string
	if s := m[key]; s != nil {
		out = s.appendTo(make([]string, 0, s.len()), exclude)
	} else {
		out = []string{}
	}
	x.mu.RUnlock()
	sort.Strings(out)
	return out
}

// parseExclude reads the Ws-Exclude header: comma-separated tokens, blanks
// ignored.
func parseExclude(h string) map[string]bool {
	if h == "" {
		return nil
	}
	m := map[string]bool{}
	for _, t := range strings.Split(h, ",") {
		if t = strings.TrimSpace(t); t != "" {
			m[t] = true
		}
	}
	return m
}
