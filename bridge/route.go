package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// routeCacheTTL is how long a looked-up instance's push URL is used before
// it is looked up again. A dead instance's record ages out of the bucket
// (its TTL); pushes to it meanwhile fail as transient and are retried, and
// the retry looks again.
const routeCacheTTL = 2 * time.Second

// recheckDelay is the wait before an instance found missing is looked up
// again, once, before its connections are taken for lost.
const recheckDelay = 200 * time.Millisecond

// maxMissing bounds the instances remembered as missing (pod names come and
// go).
const maxMissing = 1024

// router picks the push URL of each connection (SPEC §6): a connection id
// that names an edge instance goes to the push URL that instance advertises
// in the instances bucket; any other id (API Gateway's) goes to the bridge's
// PushURL. No per-instance configuration: instances come and go through
// NATS.
type router struct {
	js       jetstream.JetStream
	bucket   string
	fallback *url.URL // nil: no PushURL configured

	mu      sync.Mutex
	kv      jetstream.KeyValue
	routes  map[string]route     // instance id -> where it is
	missing map[string]time.Time // instance id -> when it was last found missing
}

type route struct {
	u       *url.URL
	fetched time.Time
}

func newRouter(js jetstream.JetStream, names subjects.Names, fallback *url.URL) *router {
	return &router{js: js, bucket: names.GatewayBucket(), fallback: fallback, routes: map[string]route{}, missing: map[string]time.Time{}}
}

// resolve returns the URL to push the connection's messages to, or the
// outcome to record without pushing: gone (errInstanceLost) for an edge
// instance that is not live, transient when the bucket cannot be read,
// permanent when the id names no instance and there is no PushURL.
func (r *router) resolve(ctx context.Context, token string) (*url.URL, *Outcome) {
	id, err := subjects.ConnID(token)
	inst, edge := "", false
	if err == nil {
		inst, edge = subjects.EdgeInstance(id)
	}
	if !edge {
		if r.fallback == nil {
			return nil, &Outcome{Class: Permanent, Err: errors.New("no push URL configured and the connection id names no gateway instance")}
		}
		return r.fallback, nil
	}
	now := time.Now()
	r.mu.Lock()
	rt, ok := r.routes[inst]
	r.mu.Unlock()
	if ok && now.Sub(rt.fetched) < routeCacheTTL {
		return rt.u, nil
	}
	u, err := r.lookup(ctx, inst)
	if errors.Is(err, errInstanceLost) {
		r.mu.Lock()
		delete(r.routes, inst)
		r.mu.Unlock()
		return nil, &Outcome{Class: Gone, Err: fmt.Errorf("%w: %s", errInstanceLost, inst)}
	}
	if err != nil {
		return nil, &Outcome{Class: Transient, Err: fmt.Errorf("route to gateway instance %s: %w", inst, err)}
	}
	r.mu.Lock()
	r.routes[inst] = route{u: u, fetched: now}
	r.mu.Unlock()
	return u, nil
}

// lookup reads an instance's record.
func (r *router) lookup(ctx context.Context, inst string) (*url.URL, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, err := r.instances(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, inst)
	if errors.Is(err, jetstream.ErrKeyNotFound) && !r.recentlyMissing(inst) {
		// Once more after a moment: a replica serving the read may lag
		// behind the instance's first write by a few milliseconds. Only
		// the first lookup in a while waits: a broadcast to a dead
		// instance's many connections must not stall the workers.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(recheckDelay):
		}
		e, err = kv.Get(ctx, inst)
	}
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		r.mu.Lock()
		if len(r.missing) >= maxMissing {
			clear(r.missing) // old findings only save a recheck
		}
		r.missing[inst] = time.Now()
		r.mu.Unlock()
		return nil, errInstanceLost
	}
	if err != nil {
		return nil, err
	}
	var rec subjects.Instance
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("instance record %s: %w", inst, err)
	}
	u, err := url.Parse(rec.PushURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("instance %s advertises push URL %s, want http(s)://host/path", inst, redactPushURL(rec.PushURL))
	}
	u.Host = strings.TrimSuffix(u.Host, ":")
	return u, nil
}

// recentlyMissing reports whether inst was found missing within the last
// routeCacheTTL (and forgets older findings).
func (r *router) recentlyMissing(inst string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.missing[inst]
	if ok && time.Since(at) >= routeCacheTTL {
		delete(r.missing, inst)
		ok = false
	}
	return ok
}

// instances opens the instances bucket; while it does not exist no edge
// instance has ever run, so every instance is not live.
func (r *router) instances(ctx context.Context) (jetstream.KeyValue, error) {
	r.mu.Lock()
	kv := r.kv
	r.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := r.js.KeyValue(ctx, r.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, errInstanceLost
	}
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.kv = kv
	r.mu.Unlock()
	return kv, nil
}

// disconnectReason is the reason a connection found gone is announced
// with: lost when its edge instance vanished, else gone.
func disconnectReason(o Outcome) string {
	if errors.Is(o.Err, errInstanceLost) {
		return subjects.ReasonLost
	}
	return subjects.ReasonGone
}

// push pushes one item to where its connection is.
func (b *Bridge) push(ctx context.Context, it *item) Outcome {
	u, o := b.router.resolve(ctx, it.token)
	if o != nil {
		return *o
	}
	var seq uint64
	if id, err := subjects.ConnID(it.token); err == nil {
		if _, edge := subjects.EdgeInstance(id); edge {
			seq = it.d.seq // wsbridge gateway drops a repeat by its sequence
		}
	}
	return b.pusher.push(ctx, u, it.payload, it.d.tail, seq)
}
