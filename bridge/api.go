package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// apiQueue is the queue group of the request-reply API: each request is
// answered by one bridge instance.
const apiQueue = "wsbridge-api"

// maxList bounds a conn.list answer so it fits in a NATS message.
const maxList = 1000

// apiConcurrency bounds the API requests served at once.
const apiConcurrency = 16

func (b *Bridge) serveAPI() error {
	routes := []struct {
		subject string
		h       func(context.Context, []byte) (any, error)
	}{
		{b.names.ConnGet(), b.apiConnGet},
		{b.names.ConnList(), b.apiConnList},
		{b.names.GroupAdd(), func(ctx context.Context, d []byte) (any, error) { return b.apiGroup(ctx, d, true) }},
		{b.names.GroupRemove(), func(ctx context.Context, d []byte) (any, error) { return b.apiGroup(ctx, d, false) }},
	}
	// Requests run side by side, up to apiConcurrency at once: one slow
	// request (KV round trips) must not hold up the others.
	sem := make(chan struct{}, apiConcurrency)
	for _, r := range routes {
		h := r.h
		subject := r.subject
		serve := func(m *nats.Msg) {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
			defer cancel()
			out, err := h(ctx, m.Data)
			if err != nil {
				b.log.Debug("api error", "subject", subject, "err", err)
				out = subjects.APIError{Error: err.Error()}
			}
			data, mErr := json.Marshal(out)
			if mErr != nil {
				data, _ = json.Marshal(subjects.APIError{Error: "encode reply: " + mErr.Error()})
			}
			if m.Reply == "" {
				return
			}
			if err := m.Respond(data); err != nil {
				b.log.Warn("api reply failed", "subject", subject, "err", err)
			}
		}
		sub, err := b.nc.QueueSubscribe(subject, apiQueue, func(m *nats.Msg) {
			select {
			case sem <- struct{}{}:
			case <-b.stopCh:
				return
			}
			go serve(m)
		})
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subject, err)
		}
		b.subs = append(b.subs, sub)
	}
	return nil
}

func decodeRequest(data []byte, v any) error {
	if len(data) == 0 {
		data = []byte("{}")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("bad request: %w", err)
	}
	return nil
}

func (b *Bridge) apiConnGet(ctx context.Context, data []byte) (any, error) {
	var req subjects.ConnGetRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if _, err := subjects.ConnID(req.Token); err != nil {
		return nil, err
	}
	e, err := b.kv.Get(ctx, req.Token)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return nil, errNotFound
		}
		return nil, fmt.Errorf("registry get: %w", err)
	}
	return json.RawMessage(e.Value()), nil
}

func (b *Bridge) apiConnList(ctx context.Context, data []byte) (any, error) {
	var req subjects.ConnListRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	limit := req.Limit
	if limit <= 0 || limit > maxList {
		limit = maxList
	}
	var tokens []string
	switch {
	case req.Group != "" && req.User != "":
		users := map[string]bool{}
		for _, t := range b.idx.user(req.User, nil) {
			users[t] = true
		}
		for _, t := range b.idx.group(req.Group, nil) {
			if users[t] {
				tokens = append(tokens, t)
			}
		}
	case req.Group != "":
		tokens = b.idx.group(req.Group, nil)
	case req.User != "":
		tokens = b.idx.user(req.User, nil)
	default:
		tokens = b.idx.all(nil)
	}
	reply := subjects.ConnListReply{Total: len(tokens), Connections: []subjects.ConnectEvent{}}
	budget := listBudget(b.nc.MaxPayload())
	size := 0
	for _, t := range tokens {
		if len(reply.Connections) >= limit {
			reply.Truncated = true
			break
		}
		e, err := b.kv.Get(ctx, t)
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
				continue // deleted since the index saw it
			}
			return nil, fmt.Errorf("registry get: %w", err)
		}
		var ev subjects.ConnectEvent
		if err := json.Unmarshal(e.Value(), &ev); err != nil {
			ev = subjects.ConnectEvent{Token: t}
		}
		raw, err := json.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("encode record of %s: %w", t, err)
		}
		if size+len(raw)+1 > budget {
			reply.Truncated = true
			break
		}
		size += len(raw) + 1 // and a comma
		reply.Connections = append(reply.Connections, ev)
	}
	return reply, nil
}

// listBudget is how many bytes of records a conn.list answer may carry
// under the connection's maximum payload, leaving room for the rest of the
// answer.
func listBudget(maxPayload int64) int {
	headroom := max(maxPayload/64, 4096)
	if headroom >= maxPayload {
		headroom = maxPayload / 2
	}
	return int(maxPayload - headroom)
}

// apiGroup adds or removes groups on a registry record with optimistic
// concurrency: a concurrent writer makes Update fail, and the change is
// re-applied to the fresh record.
func (b *Bridge) apiGroup(ctx context.Context, data []byte, add bool) (any, error) {
	var req subjects.GroupRequest
	if err := decodeRequest(data, &req); err != nil {
		return nil, err
	}
	if _, err := subjects.ConnID(req.Token); err != nil {
		return nil, err
	}
	if len(req.Groups) == 0 {
		return nil, errors.New("no groups given")
	}
	change, err := subjects.Groups(req.Groups)
	if err != nil {
		return nil, err
	}
	for try := 0; try < 10; try++ {
		e, err := b.kv.Get(ctx, req.Token)
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
				return nil, errNotFound
			}
			return nil, fmt.Errorf("registry get: %w", err)
		}
		// Keep every field of the record as it is, unknown ones included.
		var rec map[string]json.RawMessage
		if err := json.Unmarshal(e.Value(), &rec); err != nil || rec == nil {
			return nil, fmt.Errorf("registry record of %s is not a JSON object", req.Token)
		}
		var groups []string
		if raw, ok := rec["groups"]; ok {
			_ = json.Unmarshal(raw, &groups)
		}
		groups, err = applyGroups(groups, change, add)
		if err != nil {
			return nil, err
		}
		raw, _ := json.Marshal(groups)
		rec["groups"] = raw
		value, err := json.Marshal(rec)
		if err != nil {
			return nil, fmt.Errorf("encode record: %w", err)
		}
		if _, err := b.kv.Update(ctx, req.Token, value, e.Revision()); err != nil {
			if isConflict(err) {
				continue
			}
			return nil, fmt.Errorf("registry update: %w", err)
		}
		return json.RawMessage(value), nil
	}
	return nil, errors.New("registry update: too many concurrent writers, try again")
}

// isConflict reports a compare-and-set that lost: the key changed since.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || subjects.IsWrongLastSequence(err)
}

// applyGroups adds change to cur, or removes it, as sets: the result holds
// each group once (a record written with duplicates is cleaned), in the
// order first seen, and adding past subjects.MaxGroups fails. Linear in
// the sizes of cur and change.
func applyGroups(cur, change []string, add bool) ([]string, error) {
	drop := map[string]bool{}
	if !add {
		for _, g := range change {
			drop[g] = true
		}
	}
	seen := make(map[string]bool, len(cur)+len(change))
	out := []string{}
	put := func(g string) {
		if !seen[g] && !drop[g] {
			seen[g] = true
			out = append(out, g)
		}
	}
	for _, g := range cur {
		put(g)
	}
	if add {
		for _, g := range change {
			put(g)
		}
		if len(out) > subjects.MaxGroups {
			return nil, fmt.Errorf("%w: the connection would be in %d groups, limit %d", subjects.ErrTooManyGroups, len(out), subjects.MaxGroups)
		}
	}
	return out, nil
}
