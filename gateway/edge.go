package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// edge is what makes a gateway one of many instances behind a balancer
// (SPEC §6). Its connection ids name the instance; it keeps a record
// (instance id -> push URL) in the instances bucket, whose records age out
// after InstanceTTL unless refreshed, so bridges route pushes by the id
// alone; it announces its own connections with reason shutdown when it
// stops; and it watches the other instances: when one's record is gone and
// the instance does not answer at its push address either, the registry
// records naming it are announced with reason lost and deleted.
//
// A record is not proof of life, nor its absence of death: an instance cut
// off from NATS, or whose bucket is electing a leader, cannot refresh its
// record, which ages out while the instance serves its clients. So nobody
// ends a connection on a record's absence alone: survivors ask the
// instance itself (answers), bridges keep pushing to its last address, and
// the instance closes its own clients only when their registry records
// were really deleted meanwhile (reconcile).
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

	inMu sync.Mutex
	in   jetstream.Stream // WS_IN, once needed

	// earlier is set while the sweep of this instance's earlier life has
	// not completed (NATS failed it at start): the watch loop tries it
	// again. mine holds the connection ids this life handed out
	// meanwhile: they name this instance too, and are not the earlier
	// life's.
	earlierMu sync.Mutex
	earlier   bool
	mine      map[string]bool

	// addrs holds the push URL each other instance last advertised, to
	// ask it whether it is alive once its record is gone; used by the
	// watch loop only.
	addrs map[string]instanceAddr
	probe *http.Client

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
		addrs: map[string]instanceAddr{},
		probe: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}, nil
}

// instanceAddr is where another instance said it takes pushes.
type instanceAddr struct {
	pushURL string
	read    time.Time
}

// addrReread is how long an instance's push URL is used before its record
// is read again (an instance restarted elsewhere under the same id).
const addrReread = time.Minute

// HeaderInstance names, in every answer of an edge instance's push address,
// the instance that answers: a survivor asks an instance whose record is
// gone whether it is alive, and only the instance itself counts (another
// may have its address now).
const HeaderInstance = "Ws-Instance-Id"

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
	// instance is from an earlier one that did not shut down cleanly.
	// Records of other instances without a record now are theirs to keep
	// if they are only cut off: they are watched like any instance that
	// vanishes, and swept when they stay away (about three TTLs).
	self := e.g.opts.InstanceID
	absent := map[string]bool{}
	sctx, scancel := context.WithTimeout(ctx, startSweepTimeout)
	err = e.sweepEarlier(sctx, absent)
	scancel()
	if err != nil {
		// Not given up: tried again once this life runs, its own
		// connections told apart from the earlier life's.
		e.log.Warn("sweep of an earlier life failed; trying again until it completes", "err", err)
		e.earlierMu.Lock()
		e.earlier, e.mine = true, map[string]bool{}
		e.earlierMu.Unlock()
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
	e.learn(ctx, known)
	for inst := range absent {
		known[inst] = true
	}
	e.wg.Add(2)
	go e.refreshLoop()
	go e.loop(known)
	return nil
}

// startSweepTimeout bounds the sweep of an earlier life at start, within
// start's own bound: a sweep NATS fails is tried again later, while the
// instance must advertise itself now.
const startSweepTimeout = 10 * time.Second

// sweepTimeout bounds a sweep: listing the registry, the live set, and
// the first attempt of each announcement.
const sweepTimeout = 30 * time.Second

// sweepEarlier announces as lost the records of this instance's earlier
// life (every record naming it, but the connections this life handed out)
// and adds to absent the instances with records and no instance record.
func (e *edge) sweepEarlier(ctx context.Context, absent map[string]bool) error {
	self := e.g.opts.InstanceID
	return e.sweep(ctx, true, func(id, inst string, live map[string]bool) bool {
		if inst != self && !live[inst] {
			absent[inst] = true
		}
		return inst == self && !e.ofThisLife(id)
	})
}

// handedOut notes a connection id of this life, while the earlier life's
// sweep is still to complete.
func (e *edge) handedOut(id string) {
	e.earlierMu.Lock()
	defer e.earlierMu.Unlock()
	if e.earlier {
		e.mine[id] = true
	}
}

func (e *edge) ofThisLife(id string) bool {
	e.earlierMu.Lock()
	defer e.earlierMu.Unlock()
	return e.mine[id]
}

// sweepEarlierAgain retries a sweep of the earlier life that failed, and
// once it completes watches the instances it found absent, as start does.
func (e *edge) sweepEarlierAgain(known map[string]bool) {
	e.earlierMu.Lock()
	pending := e.earlier
	e.earlierMu.Unlock()
	if !pending || !e.g.opts.NATS.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sweepTimeout)
	defer cancel()
	absent := map[string]bool{}
	if err := e.sweepEarlier(ctx, absent); err != nil {
		e.log.Debug("sweep of an earlier life failed again; trying again", "err", err)
		return
	}
	e.earlierMu.Lock()
	e.earlier, e.mine = false, nil
	e.earlierMu.Unlock()
	e.log.Info("sweep of an earlier life completed")
	for inst := range absent {
		if _, ok := known[inst]; !ok {
			known[inst] = true
		}
	}
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

// Refresh retries: after a failed refresh the record is written again
// after refreshRetry, doubling up to a third of the TTL, so that it is back
// as soon as NATS takes it.
const refreshRetry = 100 * time.Millisecond

// refreshLoop rewrites the record every third of the TTL. A refresh that
// fails is retried soon, not at the next tick: while the record is missing
// the survivors suspect this instance and bridges push to an address they
// only remember. It runs alone, so that listing the instances or sweeping,
// which can wait out a slow NATS, never delays it.
//
// An instance whose refresh failed for longer than the TTL looks for its
// connections' registry records afterwards: those swept meanwhile (deleted
// and announced lost by a survivor or a bridge that took this instance for
// dead) are closed, so no connection lives on that NATS has ended.
func (e *edge) refreshLoop() {
	defer e.wg.Done()
	every := e.ttl / 3
	t := time.NewTimer(every)
	defer t.Stop()
	lastRefresh := time.Now()
	failures := 0
	for {
		select {
		case <-e.quit:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		_, err := e.instances.Put(ctx, e.g.opts.InstanceID, e.record)
		cancel()
		e.g.writes.observe(writeInstance, e.g.since(), err)
		if err != nil {
			failures++
			if failures == 1 {
				e.log.Warn("instance record not refreshed; retrying", "err", err)
			} else {
				e.log.Debug("instance record not refreshed; retrying", "failures", failures, "err", err)
			}
			t.Reset(min(refreshRetry<<min(failures-1, 10), every))
			continue
		}
		if failures > 0 {
			e.log.Info("instance record refreshed again", "failures", failures, "gap", time.Since(lastRefresh).Round(time.Millisecond))
		}
		failures = 0
		if gap := time.Since(lastRefresh); gap > e.ttl {
			e.log.Warn("instance record was not refreshed for longer than its TTL; checking for swept connections", "gap", gap.Round(time.Millisecond))
			e.wg.Add(1)
			go func() { defer e.wg.Done(); e.reconcile() }()
		}
		lastRefresh = time.Now()
		t.Reset(every)
	}
}

// loop checks the live set every half TTL: an instance seen before and
// missing twice since is swept, unless it answers at its push address.
//
// A NATS outage longer than the TTL ages every record out, the living
// instances' too. So absence is believed only once this instance has been
// connected for two TTLs (every living instance has reconnected and
// refreshed by then, unless it is cut off itself), and even then an
// instance that answers is alive.
func (e *edge) loop(known map[string]bool) {
	defer e.wg.Done()
	check := time.NewTicker(e.ttl / 2)
	defer check.Stop()
	upSince := time.Now()
	nc := e.g.opts.NATS
	reconnects := nc.Stats().Reconnects
	for {
		select {
		case <-e.quit:
			return
		case <-check.C:
			e.sweepEarlierAgain(known)
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
	e.learn(ctx, live)
	for inst := range live {
		known[inst] = true
	}
	return known
}

// learn reads the push URL of each live instance not read within
// addrReread: what to ask if its record goes.
func (e *edge) learn(ctx context.Context, live map[string]bool) {
	now := time.Now()
	for inst := range live {
		if a, ok := e.addrs[inst]; inst == e.g.opts.InstanceID || ok && now.Sub(a.read) < addrReread {
			continue
		}
		u, err := e.pushURLOf(ctx, inst)
		if errors.Is(err, errNoPushURL) {
			e.log.Warn("gateway instance record without a push URL", "instance", inst, "err", err)
			continue
		}
		if err != nil {
			continue // next time
		}
		e.addrs[inst] = instanceAddr{pushURL: u, read: now}
	}
}

// errNoPushURL is an instance record that names no push URL.
var errNoPushURL = errors.New("instance record without a push URL")

// pushURLOf reads the push URL instance inst advertises in the instances
// bucket (jetstream.ErrKeyNotFound: it has no record).
func (e *edge) pushURLOf(ctx context.Context, inst string) (string, error) {
	en, err := e.instances.Get(ctx, inst)
	if err != nil {
		return "", err
	}
	var rec subjects.Instance
	if err := json.Unmarshal(en.Value(), &rec); err != nil || rec.PushURL == "" {
		return "", fmt.Errorf("%w: %s: %v", errNoPushURL, inst, err)
	}
	return rec.PushURL, nil
}

// answers reports whether inst answers at the push URL it last advertised:
// every instance answers a GET there (405) naming itself in HeaderInstance.
// One cut off from NATS answers; a dead one does not, nor does another
// instance that took its address.
func (e *edge) answers(ctx context.Context, inst string) bool {
	a, ok := e.addrs[inst]
	if !ok {
		return false // never seen live by this instance: nothing to ask
	}
	ctx, cancel := context.WithTimeout(ctx, min(e.ttl/2, 2*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.pushURL, nil)
	if err != nil {
		return false
	}
	if tok := e.g.opts.PushToken; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := e.probe.Do(req)
	if err != nil {
		e.log.Debug("gateway instance does not answer", "instance", inst, "err", err)
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	_ = resp.Body.Close()
	if got := resp.Header.Get(HeaderInstance); got != inst {
		e.log.Debug("another gateway instance answers at a vanished one's push address", "instance", inst, "answered", got, "status", resp.StatusCode)
		return false
	}
	return true
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
		gone = e.spare(gone, next)
	}
	if len(gone) > 0 {
		e.log.Warn("gateway instances vanished; announcing their connections lost", "instances", gone)
		dead := func(_, inst string, live map[string]bool) bool { return slices.Contains(gone, inst) && !live[inst] }
		// A sweep takes longer than a check may (a large registry to
		// list): its own bound.
		sctx, scancel := context.WithTimeout(context.Background(), sweepTimeout)
		err := e.sweep(sctx, false, dead)
		scancel()
		if err != nil {
			e.log.Warn("sweep failed; trying again at the next check", "err", err)
			for _, inst := range gone {
				next[inst] = false // retried next time
			}
		} else {
			for _, inst := range gone {
				delete(e.addrs, inst)
			}
		}
	}
	return next
}

// spare asks each instance in gone whether it is alive (answers) and
// returns those that are not; those that are stay suspects in next, asked
// again at the next check, and keep their connections.
func (e *edge) spare(gone []string, next map[string]bool) []string {
	alive := make([]bool, len(gone))
	var wg sync.WaitGroup
	for i, inst := range gone {
		wg.Add(1)
		go func() { defer wg.Done(); alive[i] = e.answers(context.Background(), inst) }()
	}
	wg.Wait()
	var dead []string
	for i, inst := range gone {
		if !alive[i] {
			dead = append(dead, inst)
			continue
		}
		next[inst] = false
		e.log.Info("gateway instance has no record but answers at its push address; its connections stay", "instance", inst)
	}
	return dead
}

// reconcile closes the connections whose registry records were deleted
// (swept as lost by another instance or a bridge while this one was cut
// off, which announced them): their clients reconnect and register afresh.
// A connection whose record is there, or has no trace at all (never
// written, or aged out where the server leaves no marker), was not ended by
// anyone and stays.
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
	var st jetstream.Stream // the registry's stream, once needed
	for _, c := range open {
		swept, err := e.swept(ctx, reg, &st, subjects.Token(c.id))
		if err != nil {
			e.log.Warn("reconcile", "err", err)
			return
		}
		if swept && c.announce.CompareAndSwap(nil, &announceLost) {
			closed++
			go c.close(statusGoingAway, "connection state lost", discLost)
		}
	}
	if closed > 0 {
		e.log.Warn("closed connections whose records were swept while this instance was cut off", "connections", closed)
	}
	// Suspended sessions likewise: one swept was announced lost, and its
	// client, when it returns, is told so.
	g.smu.Lock()
	waiting := make([]*session, 0, len(g.sessions))
	for _, s := range g.sessions {
		waiting = append(waiting, s)
	}
	g.smu.Unlock()
	ended := 0
	for _, s := range waiting {
		s.mu.Lock()
		live := s.state != sessSuspended
		s.mu.Unlock()
		if live {
			continue // its socket was checked above
		}
		swept, err := e.swept(ctx, reg, &st, subjects.Token(s.id))
		if err != nil {
			e.log.Warn("reconcile", "err", err)
			return
		}
		if swept && s.sweptAway() {
			ended++
		}
	}
	if ended > 0 {
		e.log.Warn("ended suspended sessions whose records were swept while this instance was cut off", "sessions", ended)
	}
	e.log.Info("connections reconciled with the registry", "checked", len(open)+len(waiting), "closed", closed+ended)
}

// swept reports whether token's registry record was deleted: its latest
// entry is a delete or purge marker (whoever wrote it announced the
// connection's end, subjects.Names.Forget) or the server's marker of a
// record that aged out (the bridges announce those expired). Read from the
// bucket's stream, since a key's Get does not tell a deleted record from
// one never written.
func (e *edge) swept(ctx context.Context, reg jetstream.KeyValue, st *jetstream.Stream, token string) (bool, error) {
	_, err := reg.Get(ctx, token)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, err
	}
	bucket := reg.Bucket()
	if *st == nil {
		if *st, err = e.js.Stream(ctx, "KV_"+bucket); err != nil {
			return false, fmt.Errorf("registry stream: %w", err)
		}
	}
	m, err := (*st).GetLastMsgForSubject(ctx, "$KV."+bucket+"."+token)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("registry entry %s: %w", token, err)
	}
	switch m.Header.Get("KV-Operation") {
	case "DEL", "PURGE":
		return true, nil
	}
	return m.Header.Get("Nats-Marker-Reason") != "", nil
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

// sweep announces as lost every registry record (connection id, its
// instance) that dead reports dead, given the live set. The registry is
// listed before the live set is read: an instance advertises itself before
// it hands out ids, so a record listed belongs to an instance in the later
// live set unless that instance is gone. It fails unless it listed the
// whole registry; an announcement NATS does not take is retried until it
// is (announce), so a sweep that returns nil is complete.
//
// Records naming an instance not live (and, in the sweep of this instance's
// earlier life, records naming it) are read for the instance holding their
// resumed session, if another took it: they are that instance's.
func (e *edge) sweep(ctx context.Context, earlier bool, dead func(id, inst string, live map[string]bool) bool) error {
	reg, err := e.registryKV(ctx)
	if reg == nil {
		return err
	}
	// The lister's own context: ended, it stops the listing early.
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	keys, err := reg.ListKeys(lctx)
	if err != nil {
		return fmt.Errorf("list registry: %w", err)
	}
	type rec struct{ id, inst string }
	var recs []rec
	for token := range keys.Keys() {
		id, err := subjects.ConnID(token)
		if err != nil {
			continue
		}
		if inst, ok := subjects.EdgeInstance(id); ok {
			recs = append(recs, rec{id, inst})
		}
	}
	if err := ctx.Err(); err != nil {
		// The lister ends its keys early, without an error, when its
		// context ends: what was listed may not be all.
		return fmt.Errorf("list registry: cut short after %d records: %w", len(recs), err)
	}
	if len(recs) == 0 {
		return nil
	}
	live, err := e.live(ctx)
	if err != nil {
		return err
	}
	// A resumable session taken by another instance names that one in
	// its record: it is that instance's to keep, or to lose.
	self := e.g.opts.InstanceID
	for i, r := range recs {
		if live[r.inst] && !(earlier && r.inst == self) {
			continue
		}
		h, err := e.holderOf(ctx, reg, r.id)
		if err != nil {
			return err
		}
		if h != "" {
			recs[i].inst = h
		}
	}
	var wg sync.WaitGroup
	n := 0
	for _, r := range recs {
		if !dead(r.id, r.inst, live) {
			continue
		}
		n++
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.announce(r.id, subjects.ReasonLost)
		}()
	}
	wg.Wait()
	if n > 0 {
		e.g.m.disconnects.WithLabelValues(discLost).Add(float64(n))
		e.log.Info("connections of vanished instances announced lost", "connections", n)
	}
	return nil
}

// holderOf reads the instance a connection's registry record names as the
// holder of its resumed session ("" when none, or the record is gone).
func (e *edge) holderOf(ctx context.Context, reg jetstream.KeyValue, id string) (string, error) {
	en, err := reg.Get(ctx, subjects.Token(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("registry record of %s: %w", id, err)
	}
	var rec struct {
		Instance string `json:"instance"`
	}
	if json.Unmarshal(en.Value(), &rec) != nil || subjects.CheckInstanceID(rec.Instance) != nil {
		return "", nil
	}
	return rec.Instance, nil
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
// (subjects.Names.Forget, or ForgetSwept for another instance's: see
// forget): its one disconnect event, here with reason shutdown or lost,
// and its registry record deleted; when the record is already gone, its
// end was announced by someone else. What NATS
// does not take at once is retried until it does (endJob, conclude).
func (e *edge) announce(id, reason string) {
	j := &endJob{g: e.g, id: id, reason: reason, at: time.Now(), registered: true}
	if !e.g.opts.NATS.IsConnected() {
		// Each attempt would only wait out its timeout (a shutdown of
		// thousands of connections, one after the other): the retries
		// take them once NATS is back.
		e.g.retries.add(j, 1)
		return
	}
	e.sem <- struct{}{}
	defer func() { <-e.sem }()
	ctx, cancel := context.WithTimeout(context.Background(), natsStepTimeout)
	defer cancel()
	token := subjects.Token(id)
	reg, err := e.registryKV(ctx)
	if reg != nil {
		_, err = e.forget(id, reason)(ctx, e.js, reg, token, reason, j.at)
	}
	if err != nil {
		e.log.Warn("disconnect not taken by NATS; retrying until it is", "token", token, "reason", reason, "err", err)
		e.g.retries.add(j, 1)
	}
}

// forget is how the end of connection id is announced: Forget (its event
// stored before its record is deleted), or ForgetSwept for a connection of
// another instance swept as lost, which may come back (its record goes
// first, so that the instance closes the connection rather than keeping
// one announced lost).
func (e *edge) forget(id, reason string) func(context.Context, jetstream.JetStream, jetstream.KeyValue, string, string, time.Time) (string, error) {
	if inst, ok := subjects.EdgeInstance(id); ok && inst != e.g.opts.InstanceID && reason == subjects.ReasonLost {
		return e.names.ForgetSwept
	}
	return e.names.Forget
}

// conclude ends j's connection on NATS, whatever an earlier attempt left
// done: its record deleted and its one disconnect event stored.
//
// The record may still be there (nothing was done: Forget does it all), or
// be gone with no event stored. A sweep's attempt (ForgetSwept) that
// deleted it and then failed to publish leaves that (the delete taken, the publish not: a stream
// without a leader while a NATS node restarts, an acknowledgement that
// never came), whether it was this instance's or the cleanup function's,
// and retrying Forget would then find nothing to do. So the event is
// published when WS_IN has none, under its Nats-Msg-Id
// (subjects.DisconnectMsgID): if another component deleted the record and
// is publishing at the same moment, the stream keeps one of the two, and
// an event older than its duplicate window is found in WS_IN first. One
// event per connection either way.
//
// A connection swept as lost whose instance is back (it was cut off, not
// dead) is that instance's again while its record is there: only a record
// the sweep already deleted is announced, and the instance closes that
// connection when it reconciles.
func (e *edge) conclude(ctx context.Context, j *endJob) error {
	token := subjects.Token(j.id)
	back, err := e.instanceBack(ctx, j)
	if err != nil {
		return err
	}
	reg, err := e.registryKV(ctx)
	if err != nil {
		return err
	}
	switch {
	case reg != nil && back:
		_, err := reg.Get(ctx, token)
		if err == nil {
			e.log.Info("gateway instance is back: its connection is not announced lost", "token", token)
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("registry get %s: %w", token, err)
		}
	case reg != nil:
		announced, err := e.forget(j.id, j.reason)(ctx, e.js, reg, token, j.reason, j.at)
		if err != nil {
			return err
		}
		if announced != "" {
			return nil
		}
	}
	in, err := e.inbound(ctx)
	if err != nil {
		return err
	}
	switch _, err := in.GetLastMsgForSubject(ctx, e.names.Disconnect(token)); {
	case err == nil:
		return nil // announced
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return fmt.Errorf("disconnect event of %s: %w", token, err)
	}
	if err := e.names.PublishDisconnect(ctx, e.js, token, j.reason, j.at); err != nil {
		return err
	}
	e.log.Info("disconnect event published for a registry record deleted without one", "token", token, "reason", j.reason)
	return nil
}

// instanceBack reports whether j announces lost a connection of another
// instance that has an instance record again.
func (e *edge) instanceBack(ctx context.Context, j *endJob) (bool, error) {
	inst, ok := subjects.EdgeInstance(j.id)
	if !ok || j.reason != subjects.ReasonLost || inst == e.g.opts.InstanceID || e.instances == nil {
		return false, nil
	}
	_, err := e.instances.Get(ctx, inst)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	}
	return false, fmt.Errorf("gateway instance %s: %w", inst, err)
}

// inbound returns WS_IN.
func (e *edge) inbound(ctx context.Context) (jetstream.Stream, error) {
	e.inMu.Lock()
	defer e.inMu.Unlock()
	if e.in != nil {
		return e.in, nil
	}
	st, err := e.js.Stream(ctx, e.names.StreamIn())
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", e.names.StreamIn(), err)
	}
	e.in = st
	return st, nil
}

// stop ends the refresh loop and withdraws the instance record, once every
// connection has been announced.
func (e *edge) stop() {
	e.stopOnce.Do(func() {
		close(e.quit)
		e.wg.Wait()
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
