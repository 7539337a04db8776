package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// apiQueue is the queue group of the request-reply API: each request is
// answered by one bridge instance.
const apiQueue = "wsbridge-api"

// maxList bounds a conn.list answer so it fits in a NATS message.
const maxList = 1000

// apiLogEvery spaces the log lines of refused API requests: a burst of
// them gets one line per interval and kind.
const apiLogEvery = 10 * time.Second

// apiRequest is one request waiting in the API's queue.
type apiRequest struct {
	m       *nats.Msg
	subject string
	h       func(context.Context, []byte) (any, error)
}

// api is the request-reply API's side of the bridge: NATS connections of
// its own, so that requests and answers of any size or number never delay
// the partition leases and the outbound log on the bridge's connection (a
// burst of large requests used to get that connection cut as a slow
// consumer, and every partition with it); the registry reads and writes of
// the requests on a second one, so that they do not wait behind a burst of
// requests either; and a bounded queue served by a fixed number of
// workers.
type api struct {
	nc    *nats.Conn // requests and answers
	kvNC  *nats.Conn // the registry reads and writes of requests
	owned bool       // opened by the bridge, closed by it
	kv    jetstream.KeyValue
	queue chan apiRequest

	tooLargeLog, busyLog rate.Sometimes
}

// connectAPI opens the API's connections with the options of the bridge's
// (the same servers, credentials and TLS), or takes Deps.APIConn for both,
// and opens the registry bucket.
func (b *Bridge) connectAPI(ctx context.Context, given *nats.Conn) error {
	a := &api{nc: given, kvNC: given, queue: make(chan apiRequest, b.opts.APIQueue)}
	a.tooLargeLog.Interval, a.busyLog.Interval = apiLogEvery, apiLogEvery
	if given == nil {
		a.owned = true
		var err error
		if a.nc, err = b.apiConnect("api"); err == nil {
			a.kvNC, err = b.apiConnect("api-registry")
		}
		if err != nil {
			a.close()
			return err
		}
	}
	js, err := jetstream.New(a.kvNC)
	if err != nil {
		a.close()
		return fmt.Errorf("api: jetstream: %w", err)
	}
	if a.kv, err = js.KeyValue(ctx, b.names.Bucket()); err != nil {
		a.close()
		return fmt.Errorf("api: registry bucket %s: %w", b.names.Bucket(), err)
	}
	b.api = a
	return nil
}

// apiConnect opens one of the API's connections, named after the bridge's
// with the suffix, its events logged with connection=suffix.
func (b *Bridge) apiConnect(suffix string) (*nats.Conn, error) {
	o := b.nc.Opts
	name := o.Name
	if name == "" {
		name = b.opts.Name
	}
	o.Name = name + "-" + suffix
	log := b.log.With("connection", suffix)
	o.DisconnectedErrCB = func(_ *nats.Conn, err error) {
		if err != nil {
			log.Warn("nats connection of the api disconnected: requests in flight are lost", "err", err)
		}
	}
	o.ReconnectedCB = func(*nats.Conn) { log.Info("nats connection of the api reconnected") }
	o.ClosedCB, o.ConnectedCB, o.DisconnectedCB, o.DiscoveredServersCB = nil, nil, nil, nil
	o.AsyncErrorCB = func(_ *nats.Conn, sub *nats.Subscription, err error) {
		if sub != nil {
			log.Warn("api requests dropped: they came faster than the bridge took them in", "subject", sub.Subject, "err", err)
			return
		}
		log.Warn("nats connection of the api", "err", err)
	}
	nc, err := o.Connect()
	if err != nil {
		return nil, fmt.Errorf("api: connect to NATS: %w", err)
	}
	return nc, nil
}

// close closes the API's connections when the bridge opened them.
func (a *api) close() {
	if a == nil || !a.owned {
		return
	}
	for _, nc := range []*nats.Conn{a.nc, a.kvNC} {
		if nc != nil {
			nc.Close()
		}
	}
}

// serveAPI subscribes to the API's subjects on its connection and starts
// its workers. A request larger than APIMaxRequestBytes is refused unread,
// one that finds the queue full is refused at once ("busy"): each gets an
// {"error"} answer, is counted and logged (one line per 10s), and nothing
// waits without bound.
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
	a := b.api
	for range b.opts.APIWorkers {
		b.wg.Add(1)
		go b.apiWorker()
	}
	for _, r := range routes {
		subject, h := r.subject, r.h
		var sub *nats.Subscription
		var subReady = make(chan struct{})
		dropped := 0 // what the subscription had dropped at the last request; its callback's alone
		sub, err := a.nc.QueueSubscribe(subject, apiQueue, func(m *nats.Msg) {
			<-subReady
			// Requests arriving faster than this callback takes them wait
			// in the connection's buffer of the subscription (64 MiB);
			// past it NATS drops them (they get no answer) and reports a
			// slow consumer, which is logged: counted here.
			if d, err := sub.Dropped(); err == nil && d > dropped {
				b.m.APIRequests.WithLabelValues(metrics.APIDropped).Add(float64(d - dropped))
				dropped = d
			}
			if n := len(m.Data); int64(n) > b.opts.APIMaxRequestBytes {
				b.m.APIRequests.WithLabelValues(metrics.APITooLarge).Inc()
				a.tooLargeLog.Do(func() {
					b.log.Info("api request refused: too large (one line per 10s)", "subject", subject, "bytes", n, "api_max_request_bytes", b.opts.APIMaxRequestBytes)
				})
				b.reply(m, subject, subjects.APIError{Error: fmt.Sprintf("request too large: %d bytes, the API takes at most %d", n, b.opts.APIMaxRequestBytes)})
				return
			}
			select {
			case a.queue <- apiRequest{m: m, subject: subject, h: h}:
			default:
				b.m.APIRequests.WithLabelValues(metrics.APIBusy).Inc()
				a.busyLog.Do(func() {
					b.log.Info("api request refused: queue full (one line per 10s)", "subject", subject, "api_queue", b.opts.APIQueue, "api_workers", b.opts.APIWorkers)
				})
				b.reply(m, subject, subjects.APIError{Error: fmt.Sprintf("busy: %d requests are waiting for this bridge; try again", b.opts.APIQueue)})
			}
		})
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subject, err)
		}
		close(subReady)
		b.subs = append(b.subs, sub)
	}
	return nil
}

// apiWorker serves queued requests, one at a time, until the bridge stops.
func (b *Bridge) apiWorker() {
	defer b.wg.Done()
	for {
		select {
		case <-b.quit:
			return
		case r := <-b.api.queue:
			b.serveRequest(r)
		}
	}
}

// serveRequest answers one request within 5s.
func (b *Bridge) serveRequest(r apiRequest) {
	ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
	defer cancel()
	out, err := r.h(ctx, r.m.Data)
	result := metrics.APIOK
	if err != nil {
		result = metrics.APIError
		b.log.Debug("api error", "subject", r.subject, "err", err)
		out = subjects.APIError{Error: err.Error()}
	}
	b.m.APIRequests.WithLabelValues(result).Inc()
	b.reply(r.m, r.subject, out)
}

// reply answers a request, when it asked for an answer.
func (b *Bridge) reply(m *nats.Msg, subject string, out any) {
	if m.Reply == "" {
		return
	}
	data, err := json.Marshal(out)
	if err != nil {
		data, _ = json.Marshal(subjects.APIError{Error: "encode reply: " + err.Error()})
	}
	if err := m.Respond(data); err != nil {
		b.log.Warn("api reply failed", "subject", subject, "err", err)
	}
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
	e, err := b.api.kv.Get(ctx, req.Token)
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
	budget := listBudget(b.api.nc.MaxPayload())
	size := 0
	for _, t := range tokens {
		if len(reply.Connections) >= limit {
			reply.Truncated = true
			break
		}
		e, err := b.api.kv.Get(ctx, t)
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
		e, err := b.api.kv.Get(ctx, req.Token)
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
		if _, err := b.api.kv.Update(ctx, req.Token, value, e.Revision()); err != nil {
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
