package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// edge is what makes a gateway one of many instances behind a balancer
// (SPEC §6). Its connection ids name the instance; it keeps a record
// (instance id -> push URL) in the instances bucket, whose records age out
// after InstanceTTL unless refreshed, so bridges route pushes by the id
// alone; it announces its own connections with reason shutdown when it
// stops; and it watches the other instances: when one's record is gone, the
// registry records naming it are announced with reason lost and deleted.
type edge struct {
	g     *Gateway
	log   *slog.Logger
	names subjects.Names
	js    jetstream.JetStream

	instances jetstream.KeyValue // the live instances
	regMu     sync.Mutex
	registry  jetstream.KeyValue // WS_CONNS; nil until it exists
	ttl       time.Duration      // the instances bucket's TTL
	record    []byte

	// sem bounds the announcements in flight (a shutdown of 10,000
	// connections would otherwise publish 10,000 at once).
	sem chan struct{}

	unannounced atomic.Int64 // shutdowns not announced: NATS was down

	stopOnce sync.Once
	quit     chan struct{}
	wg       sync.WaitGroup
}

// announceConcurrency bounds announcements in flight.
const announceConcurrency = 64

func newEdge(g *Gateway) (*edge, error) {
	names, err := subjects.New(g.opts.Prefix)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(g.opts.NATS)
	if err != nil {
		return nil, fmt.Errorf("gateway: jetstream: %w", err)
	}
	rec, err := json.Marshal(subjects.Instance{ID: g.opts.InstanceID, PushURL: g.opts.PushURL, StartedAt: time.Now().UTC()})
	if err != nil {
		return nil, err
	}
	return &edge{
		g: g, log: g.log, names: names, js: js, record: rec,
		sem: make(chan struct{}, announceConcurrency), quit: make(chan struct{}),
	}, nil
}

// start opens the instances bucket (creating it with InstanceTTL when it is
// missing), announces as lost what an earlier life of this instance left in
// the registry, advertises the instance and starts refreshing its record
// and watching the others.
func (e *edge) start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	bucket := e.names.GatewayBucket()
	kv, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "wsbridge gateway instances: instance id -> push URL; records age out unless refreshed",
		History:     1,
		TTL:         e.g.opts.InstanceTTL,
		Replicas:    e.replicas(ctx),
		Storage:     jetstream.FileStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = e.js.KeyValue(ctx, bucket)
	}
	if err != nil {
		return fmt.Errorf("gateway: instances bucket %s: %w", bucket, err)
	}
	e.instances = kv
	e.ttl = e.g.opts.InstanceTTL
	if st, err := kv.Status(ctx); err == nil && st.TTL() > 0 {
		// The bucket's TTL decides, whoever created it.
		e.ttl = st.TTL()
	}
	if err := e.claimID(ctx, kv); err != nil {
		return err
	}
	// No connection of this life exists yet: any record naming this
	// instance is from an earlier one that did not shut down cleanly; and
	// records of instances that vanished while none was watching go too.
	self := e.g.opts.InstanceID
	if err := e.sweep(ctx, func(inst string, live map[string]bool) bool { return inst == self || !live[inst] }); err != nil {
		e.log.Warn("sweep of an earlier life failed", "err", err)
	}
	if _, err := kv.Put(ctx, self, e.record); err != nil {
		return fmt.Errorf("gateway: advertise instance %s: %w", self, err)
	}
	// The instances live now are watched from the start (the first checks
	// wait out a grace period, during which one may die).
	known, err := e.live(ctx)
	if err != nil {
		known = map[string]bool{}
	}
	e.wg.Add(1)
	go e.loop(known)
	return nil
}

// replicas copies the registry's replica count, so the instances bucket
// survives what the registry survives.
func (e *edge) replicas(ctx context.Context) int {
	s, err := e.js.Stream(ctx, "KV_"+e.names.Bucket())
	if err != nil {
		return 1
	}
	return max(s.CachedInfo().Config.Replicas, 1)
}

// loop refreshes the record every third of the TTL and checks the live set
// every half: an instance seen before and missing twice since is swept.
//
// A NATS outage longer than the TTL ages every record out, the living
// instances' too. So absence is believed only once this instance has been
// connected for two TTLs (every living instance has reconnected and
// refreshed by then, unless it is cut off itself);
// and an instance whose own refresh failed for longer than the TTL looks
// for its connections' registry records afterwards: those swept meanwhile
// are closed and announced lost, so no connection lives on unregistered.
func (e *edge) loop(known map[string]bool) {
	defer e.wg.Done()
	refresh := time.NewTicker(e.ttl / 3)
	defer refresh.Stop()
	check := time.NewTicker(e.ttl / 2)
	defer check.Stop()
	lastRefresh, upSince := time.Now(), time.Now()
	nc := e.g.opts.NATS
	reconnects := nc.Stats().Reconnects
	for {
		select {
		case <-e.quit:
			return
		case <-refresh.C:
			ctx, cancel := context.WithTimeout(context.Background(), e.ttl/3)
			_, err := e.instances.Put(ctx, e.g.opts.InstanceID, e.record)
			cancel()
			if err != nil {
				e.log.Warn("instance record not refreshed", "err", err)
				continue
			}
			if gap := time.Since(lastRefresh); gap > e.ttl {
				e.log.Warn("instance record was not refreshed for longer than its TTL; checking for swept connections", "gap", gap.Round(time.Millisecond))
				e.wg.Add(1)
				go func() { defer e.wg.Done(); e.reconcile() }()
			}
			lastRefresh = time.Now()
		case <-check.C:
			// A reconnect between two checks counts too: this loop may
			// have been busy for the whole outage.
			if r := nc.Stats().Reconnects; !nc.IsConnected() || r != reconnects {
				reconnects, upSince = r, time.Now()
				continue
			}
			if time.Since(upSince) < 2*e.ttl {
				// No absence is believed yet, but every instance seen
				// live now is one to watch: one that advertised itself
				// after this one started, and died before the grace
				// period ended, would otherwise never be known.
				known = e.observe(known)
				continue
			}
			known = e.check(known)
		}
	}
}

// observe adds the instances live now to known, sweeping nothing.
func (e *edge) observe(known map[string]bool) map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), e.ttl)
	defer cancel()
	live, err := e.live(ctx)
	if err != nil {
		return known
	}
	for inst := range live {
		known[inst] = true
	}
	return known
}

// check sweeps when an instance in known has been missing from the live
// set in two checks in a row (one missing record may be an instance slow to
// reconnect after an outage), and returns the live set to know next time,
// with the instances missing once still in it.
func (e *edge) check(known map[string]bool) map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), e.ttl)
	defer cancel()
	live, err := e.live(ctx)
	if err != nil {
		e.log.Warn("list gateway instances", "err", err)
		return known
	}
	next := map[string]bool{}
	var gone []string
	for inst := range live {
		next[inst] = true
	}
	for inst, seen := range known {
		switch {
		case live[inst], inst == e.g.opts.InstanceID: // its own record comes back with the next refresh
		case seen:
			next[inst] = false // missing once: a suspect
		default:
			gone = append(gone, inst)
		}
	}
	if len(gone) > 0 {
		e.log.Warn("gateway instances vanished; announcing their connections lost", "instances", gone)
		dead := func(inst string, live map[string]bool) bool { return slices.Contains(gone, inst) && !live[inst] }
		if err := e.sweep(ctx, dead); err != nil {
			e.log.Warn("sweep failed", "err", err)
			for _, inst := range gone {
				next[inst] = false // retried next time
			}
		}
	}
	return next
}

// reconcile closes the connections whose registry records are gone (swept
// as lost by another instance while this one was cut off, which announced
// them): their clients reconnect and register afresh.
func (e *edge) reconcile() {
	ctx, cancel := context.WithTimeout(context.Background(), e.ttl)
	defer cancel()
	reg, err := e.registryKV(ctx)
	if reg == nil {
		if err != nil {
			e.log.Warn("reconcile", "err", err)
		}
		return
	}
	g := e.g
	g.mu.Lock()
	open := make([]*conn, 0, len(g.conns))
	for _, c := range g.conns {
		if c.isReady() && c.ws != nil {
			open = append(open, c)
		}
	}
	g.mu.Unlock()
	closed := 0
	for _, c := range open {
		if _, err := reg.Get(ctx, subjects.Token(c.id)); errors.Is(err, jetstream.ErrKeyNotFound) {
			if c.announce.CompareAndSwap(nil, &announceLost) {
				closed++
				go c.close(statusGoingAway, "connection state lost", discLost)
			}
		} else if err != nil {
			e.log.Warn("reconcile", "err", err)
			return
		}
	}
	if closed > 0 {
		e.log.Warn("closed connections whose records were swept while this instance was cut off", "connections", closed)
	}
}

// live returns the instances whose records have not aged out.
func (e *edge) live(ctx context.Context) (map[string]bool, error) {
	keys, err := e.instances.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return map[string]bool{}, nil
		}
		return nil, err
	}
	live := map[string]bool{}
	for k := range keys.Keys() {
		live[k] = true
	}
	return live, nil
}

// sweep announces as lost every registry record naming an instance dead
// reports dead, given the live set. The registry is listed before the live
// set is read: an instance advertises itself before it hands out ids, so a
// record listed belongs to an instance in the later live set unless that
// instance is gone.
func (e *edge) sweep(ctx context.Context, dead func(inst string, live map[string]bool) bool) error {
	reg, err := e.registryKV(ctx)
	if reg == nil {
		return err
	}
	keys, err := reg.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("list registry: %w", err)
	}
	type rec struct{ token, inst string }
	var recs []rec
	for token := range keys.Keys() {
		id, err := subjects.ConnID(token)
		if err != nil {
			continue
		}
		if inst, ok := subjects.EdgeInstance(id); ok {
			recs = append(recs, rec{token, inst})
		}
	}
	if len(recs) == 0 {
		return nil
	}
	live, err := e.live(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	n := 0
	for _, r := range recs {
		if !dead(r.inst, live) {
			continue
		}
		n++
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.announce(r.token, subjects.ReasonLost)
		}()
	}
	wg.Wait()
	if n > 0 {
		e.g.m.disconnects.WithLabelValues(discLost).Add(float64(n))
		e.log.Info("connections of vanished instances announced lost", "connections", n)
	}
	return nil
}

// registryKV returns WS_CONNS, or nil (and no error) while it does not
// exist: then there is nothing to sweep.
func (e *edge) registryKV(ctx context.Context) (jetstream.KeyValue, error) {
	e.regMu.Lock()
	defer e.regMu.Unlock()
	if e.registry != nil {
		return e.registry, nil
	}
	kv, err := e.js.KeyValue(ctx, e.names.Bucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry bucket: %w", err)
	}
	e.registry = kv
	return kv, nil
}

// announce ends a connection on NATS the one way every component does
// (subjects.Names.Forget): whoever deletes its registry record publishes
// its one disconnect event, here with reason shutdown or lost; when the
// record is already gone, its end was announced by someone else. Failures
// are logged: the registry TTL is the safety net.
func (e *edge) announce(token, reason string) {
	if reason == subjects.ReasonShutdown && !e.g.opts.NATS.IsConnected() {
		// Stopping without NATS: waiting for each announcement to time
		// out would outlast any shutdown timeout. The record of this
		// instance ages out and the survivors announce the rest lost.
		e.unannounced.Add(1)
		return
	}
	e.sem <- struct{}{}
	defer func() { <-e.sem }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := e.registryKV(ctx)
	if reg == nil {
		if err != nil {
			e.log.Warn("disconnect not recorded", "token", token, "reason", reason, "err", err)
		}
		return
	}
	if _, err := e.names.Forget(ctx, e.js, reg, token, reason, time.Now()); err != nil {
		e.log.Warn("disconnect not recorded", "token", token, "reason", reason, "err", err)
	}
}

// stop ends the refresh loop and withdraws the instance record, once every
// connection has been announced.
func (e *edge) stop() {
	e.stopOnce.Do(func() {
		close(e.quit)
		e.wg.Wait()
		if n := e.unannounced.Load(); n > 0 {
			e.log.Warn("NATS down while stopping: connections not announced; the other instances will announce them lost", "connections", n)
		}
		if e.instances == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.instances.Delete(ctx, e.g.opts.InstanceID); err != nil {
			e.log.Warn("instance record not withdrawn", "err", err)
		}
	})
}
