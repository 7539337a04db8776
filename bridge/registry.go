package bridge

import (
	"encoding/json"
	"sort"
	"strings"
	"sync"
)

// index is the in-memory view of the registry bucket used to expand
// broadcast, group and user sends without a KV round trip per message. It
// keeps only what fan-out needs (user and groups), so 100,000 connections
// cost a few megabytes; full records are read from the bucket on demand.
type index struct {
	mu      sync.RWMutex
	conns   map[string]conn
	byGroup map[string]map[string]struct{}
	byUser  map[string]map[string]struct{}
}

type conn struct {
	user   string
	groups []string
}

// record is the part of a registry value the index reads.
type record struct {
	UserID string   `json:"userId"`
	Groups []string `json:"groups"`
}

func newIndex() *index {
	return &index{
		conns:   map[string]conn{},
		byGroup: map[string]map[string]struct{}{},
		byUser:  map[string]map[string]struct{}{},
	}
}

// put indexes a registry value; a value that does not decode is indexed
// without user and groups, so broadcast still reaches the connection.
func (x *index) put(token string, value []byte) {
	var r record
	_ = json.Unmarshal(value, &r)
	c := conn{user: r.UserID}
	if len(r.Groups) > 0 {
		c.groups = append([]string(nil), r.Groups...)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(token)
	x.conns[token] = c
	if c.user != "" {
		addTo(x.byUser, c.user, token)
	}
	for _, g := range c.groups {
		addTo(x.byGroup, g, token)
	}
}

func (x *index) remove(token string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(token)
}

func (x *index) removeLocked(token string) {
	old, ok := x.conns[token]
	if !ok {
		return
	}
	delete(x.conns, token)
	if old.user != "" {
		removeFrom(x.byUser, old.user, token)
	}
	for _, g := range old.groups {
		removeFrom(x.byGroup, g, token)
	}
}

func addTo(m map[string]map[string]struct{}, key, token string) {
	s := m[key]
	if s == nil {
		s = map[string]struct{}{}
		m[key] = s
	}
	s[token] = struct{}{}
}

func removeFrom(m map[string]map[string]struct{}, key, token string) {
	if s := m[key]; s != nil {
		delete(s, token)
		if len(s) == 0 {
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

func (x *index) members(m map[string]map[string]struct{}, key string, exclude map[string]bool) []string {
	x.mu.RLock()
	s := m[key]
	out := make([]string, 0, len(s))
	for t := range s {
		if !exclude[t] {
			out = append(out, t)
		}
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
