package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// routeCacheTTL is how long what was read of an instance's record (its push
// URL, or that it had none) is used before the record is read again.
const routeCacheTTL = 2 * time.Second

// recheckDelay is the wait before an instance found missing is looked up
// again, once, in case a replica serving the read lags behind its write.
const recheckDelay = 200 * time.Millisecond

// maxInstances bounds the instances remembered (pod names come and go).
const maxInstances = 4096

// defaultInstanceTTL is the instances bucket's TTL assumed while it cannot
// be read (the gateway's default).
const defaultInstanceTTL = 10 * time.Second

// router picks the push URL of each connection (SPEC §6): a connection id
// that names an edge instance goes to the push URL that instance advertises
// in the instances bucket; any other id (API Gateway's) goes to the bridge's
// PushURL. No per-instance configuration: instances come and go through
// NATS.
//
// An instance's record is not proof of life, nor its absence of death: a
// live instance cut off from NATS, or whose bucket is electing a leader,
// cannot refresh its record, which ages out. So the router remembers the
// push URL each instance last advertised and keeps pushing there: an
// instance that answers is alive, whatever the bucket says. Its
// connections are taken for lost only when its record is missing and it
// does not answer (a transport error, a timeout, a 5xx, someone else at its
// address), and either the record has been missing for a grace of two
// bucket TTLs or the connection's registry record is gone (a survivor swept
// it). A live instance that does not know the connection answers 404,
// which is gone as always.
type router struct {
	js       jetstream.JetStream
	bucket   string
	fallback *url.URL // nil: no PushURL configured
	// plainRefused: a push token is set and plain-HTTP push URLs of
	// instances are refused unless on loopback (see checkPlain).
	plainRefused bool

	// holder returns the instance holding a connection's resumed session
	// when its registry record names one ("" otherwise): it is routed
	// there rather than to the instance its id names.
	holder func(token string) string

	mu    sync.Mutex
	kv    jetstream.KeyValue
	grace time.Duration        // two bucket TTLs, once the bucket is open
	insts map[string]*instance // instance id -> what is known of it
}

// instance is what the router knows of one edge instance.
type instance struct {
	u       *url.URL  // the push URL its record last advertised; nil: never seen
	checked time.Time // when its record was last read (or found missing)
	// missingSince is when its record was first found missing since it
	// was last seen; zero while it is there.
	missingSince time.Time
}

// dest is where a push goes: u, unless the instance's record has been
// missing for missing (then u is its last known push URL, nil if none).
type dest struct {
	u       *url.URL
	inst    string
	missing time.Duration
}

func newRouter(js jetstream.JetStream, names subjects.Names, fallback *url.URL) *router {
	return &router{js: js, bucket: names.GatewayBucket(), fallback: fallback, grace: 2 * defaultInstanceTTL, insts: map[string]*instance{}}
}

// errPlainPush is an instance's push URL refused: plain HTTP off this host
// while a push token is set, which would send the token in the clear to
// whatever address a record in the instances bucket names.
var errPlainPush = errors.New("refused: the push token is not sent over plain HTTP to another host (give the instance's push listener TLS and an https:// --push-url, or run the bridge with --allow-plain-push on a network you trust)")

// checkPlain refuses u when a push token is set (and plain pushes are not
// allowed) and u is http:// to a host other than loopback.
func (r *router) checkPlain(u *url.URL) error {
	if !r.plainRefused || u.Scheme != "http" {
		return nil
	}
	h := u.Hostname()
	if h == "localhost" {
		return nil
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		return nil
	}
	return errPlainPush
}

// resolve returns where to push the connection's messages, or the outcome
// to record without pushing: transient when an edge instance's bucket
// cannot be read and nothing is known of it, permanent when the id names
// no instance and there is no PushURL. For an edge instance whose record is
// missing, dest.missing says for how long (see Bridge.push).
func (r *router) resolve(ctx context.Context, token string) (dest, *Outcome) {
	id, err := subjects.ConnID(token)
	inst, edge := "", false
	if err == nil {
		inst, edge = subjects.EdgeInstance(id)
	}
	if edge && r.holder != nil {
		if h := r.holder(token); h != "" && subjects.CheckInstanceID(h) == nil {
			inst = h
		}
	}
	if !edge {
		if r.fallback == nil {
			return dest{}, &Outcome{Class: Permanent, Err: errors.New("no push URL configured and the connection id names no gateway instance")}
		}
		return dest{u: r.fallback}, nil
	}
	now := time.Now()
	r.mu.Lock()
	st, ok := r.insts[inst]
	if ok && now.Sub(st.checked) < routeCacheTTL {
		d := st.dest(inst, now)
		r.mu.Unlock()
		return d, nil
	}
	wasMissing := ok && !st.missingSince.IsZero()
	r.mu.Unlock()

	u, err := r.lookup(ctx, inst, wasMissing)
	r.mu.Lock()
	defer r.mu.Unlock()
	st = r.instance(inst)
	switch {
	case err == nil:
		st.u, st.checked, st.missingSince = u, now, time.Time{}
	case errors.Is(err, errPlainPush):
		// Not a failure that passes: every push to it is refused until
		// its record says otherwise (read again after routeCacheTTL).
		return dest{}, &Outcome{Class: Permanent, Err: err}
	case errors.Is(err, errInstanceLost):
		st.checked = now
		if st.missingSince.IsZero() {
			st.missingSince = now
		}
	case st.u == nil && st.missingSince.IsZero():
		// The bucket cannot be read and nothing is known: wait.
		return dest{}, &Outcome{Class: Transient, Err: fmt.Errorf("route to gateway instance %s: %w", inst, err)}
	default:
		// The bucket cannot be read (NATS is away): what was known
		// last holds for another routeCacheTTL (not a read, and its
		// timeout, per push).
		st.checked = now
	}
	return st.dest(inst, now), nil
}

func (st *instance) dest(inst string, now time.Time) dest {
	d := dest{u: st.u, inst: inst}
	if !st.missingSince.IsZero() {
		d.missing = max(now.Sub(st.missingSince), time.Nanosecond)
	}
	return d
}

// instance returns the state of inst, made when new; r.mu is held.
func (r *router) instance(inst string) *instance {
	st, ok := r.insts[inst]
	if ok {
		return st
	}
	if len(r.insts) >= maxInstances {
		// Forget the instances found missing (a vanished instance's push
		// URL is no longer needed), or all when none is.
		for k, v := range r.insts {
			if !v.missingSince.IsZero() {
				delete(r.insts, k)
			}
		}
		if len(r.insts) >= maxInstances {
			clear(r.insts)
		}
	}
	st = &instance{}
	r.insts[inst] = st
	return st
}

// lookup reads an instance's record: its push URL, errInstanceLost when
// there is none, another error when the bucket cannot be read.
func (r *router) lookup(ctx context.Context, inst string, wasMissing bool) (*url.URL, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, err := r.instances(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, inst)
	if errors.Is(err, jetstream.ErrKeyNotFound) && !wasMissing {
		// Once more after a moment: a replica serving the read may lag
		// behind the instance's first write by a few milliseconds. Only
		// the first lookup after the record was seen waits: a broadcast
		// to a dead instance's many connections must not stall the
		// workers.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(recheckDelay):
		}
		e, err = kv.Get(ctx, inst)
	}
	if errors.Is(err, jetstream.ErrKeyNotFound) {
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
	if err := r.checkPlain(u); err != nil {
		return nil, fmt.Errorf("instance %s advertises push URL %s: %w", inst, redactPushURL(rec.PushURL), err)
	}
	return u, nil
}

// instances opens the instances bucket, and reads its TTL for the grace;
// while the bucket does not exist no edge instance has ever run, so every
// instance is missing.
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
	ttl := defaultInstanceTTL
	if st, err := kv.Status(ctx); err == nil && st.TTL() > 0 {
		ttl = st.TTL()
	}
	r.mu.Lock()
	r.kv, r.grace = kv, 2*ttl
	r.mu.Unlock()
	return kv, nil
}

// lostAfter is how long an instance that does not answer may be without a
// record before its connections are taken for lost.
func (r *router) lostAfter() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.grace
}

// disconnectReason is the reason a connection found gone is announced
// with: lost when its edge instance vanished, else gone.
func disconnectReason(o Outcome) string {
	if errors.Is(o.Err, errInstanceLost) {
		return subjects.ReasonLost
	}
	return subjects.ReasonGone
}

// push pushes one item to where its connection is. For a connection whose
// edge instance has no record, see router: the push goes to the instance's
// last known address, and only when that fails too is the connection taken
// for lost, once the grace is over or its registry record is gone.
func (b *Bridge) push(ctx context.Context, it *item) Outcome {
	d, o := b.router.resolve(ctx, it.token)
	if o != nil {
		return *o
	}
	// Every push carries its command's stream sequence: wsbridge gateway
	// (and its emulator, wsbridge dev) drops a repeat by it; API Gateway
	// ignores the header.
	seq := it.d.seq
	if d.missing == 0 {
		return b.pusher.push(ctx, d.u, it.payload, it.d.tail, seq)
	}
	var failed Outcome
	if d.u != nil {
		failed = b.pusher.push(ctx, d.u, it.payload, it.d.tail, seq)
		if failed.Class != Transient {
			return failed // it answered: alive, and it decides
		}
	} else {
		failed = Outcome{Class: Transient, Err: errors.New("its push address was never seen by this bridge")}
	}
	grace := b.router.lostAfter()
	missing := d.missing.Round(time.Millisecond)
	if d.missing >= grace || b.registryGone(ctx, it.token) {
		return Outcome{Class: Gone, Status: failed.Status, Err: fmt.Errorf("%w: %s has had no record for %v and does not answer: %v",
			errInstanceLost, d.inst, missing, failed.Err)}
	}
	return Outcome{Class: Transient, Status: failed.Status, Err: fmt.Errorf("gateway instance %s has had no record for %v (lost after %v): %w",
		d.inst, missing, grace, failed.Err)}
}

// registryGone reports whether the connection's registry record is gone:
// its end was announced (by a survivor's sweep, the cleanup function, or
// another bridge), so it is no longer waited for.
func (b *Bridge) registryGone(ctx context.Context, token string) bool {
	if b.kv == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := b.kv.Get(ctx, token)
	return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}
