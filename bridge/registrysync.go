package bridge

import (
	"context"
	"errors"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// bigRegistry is the index size from which the memory used to load it is
// handed back to the OS at once (see watch).
const bigRegistry = 10000

// watch keeps the index current from the registry bucket.
func (b *Bridge) watch(w jetstream.KeyWatcher) {
	defer b.wg.Done()
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-b.bgCtx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if b.synced.CompareAndSwap(false, true) {
					if b.idx.size() >= bigRegistry {
						// Loading a large registry passes every record
						// through the heap once (100,000 records: the
						// heap peaks near 80 MB for a 20 MB index); give
						// those pages back now rather than over minutes
						// of background scavenging.
						debug.FreeOSMemory()
					}
					close(b.syncedCh)
				}
				b.m.RegistryConnections.Set(float64(b.idx.size()))
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValuePut:
				if _, err := subjects.ConnID(e.Key()); err != nil {
					// Not written by wsbridge: a fan-out would build
					// subjects from it. Left out, and said once.
					b.log.Warn("registry key is not a connection token; not indexed", "err", err)
					continue
				}
				b.idx.putAt(e.Key(), e.Value(), e.Created())
			case jetstream.KeyValueDelete:
				b.idx.remove(e.Key())
			case jetstream.KeyValuePurge:
				// The registry's TTL expiry shows as a purge marker (the
				// bridge and the functions delete, never purge). So does
				// the age-out of a delete marker, for a connection that
				// already left: only a record the index still held has
				// expired. Every instance sees it; the Nats-Msg-Id makes
				// WS_IN store one event.
				if b.idx.remove(e.Key()) && b.synced.Load() {
					ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
					err := b.names.PublishDisconnect(ctx, b.js, e.Key(), subjects.ReasonExpired, time.Now())
					cancel()
					if err != nil {
						b.log.Warn("expired disconnect not published", "token", e.Key(), "err", err)
					}
				}
			}
			b.idxRev.Store(e.Revision())
			if b.synced.Load() {
				b.m.RegistryConnections.Set(float64(b.idx.size()))
			}
		}
	}
}

// indexSlack is how much older than the last check of the index a
// fan-out's stored time must be for that check to cover it: room for the
// bridge's clock to run behind the server's.
const indexSlack = 250 * time.Millisecond

// indexCurrent makes sure the registry index holds every registration
// stored before a fan-out stored at stamp (the server's clock), so that no
// connection registered before the fan-out is left out of it (a watcher
// can lag, after a reconnect or on a loaded machine): it reads the
// registry's last sequence and waits until the index has applied it. One
// check, made after a fan-out was stored, covers every fan-out stored
// before it, so a drain of many needs few.
func (b *Bridge) indexCurrent(stamp time.Time) {
	if v := b.idxChecked.Load(); v != 0 && stamp.Before(time.Unix(0, v).Add(-indexSlack)) {
		return
	}
	sent := time.Now()
	// A fan-out waits for the index rather than miss a connection: up to
	// 10 s (a watcher behind on a loaded machine catches up within it).
	ctx, cancel := context.WithTimeout(b.bgCtx, 10*time.Second)
	defer cancel()
	st, err := b.js.Stream(ctx, "KV_"+b.names.Bucket())
	if err != nil {
		b.log.Debug("registry index not checked before a fan-out", "err", err)
		return
	}
	last := st.CachedInfo().State.LastSeq
	for b.idxRev.Load() < last {
		select {
		case <-ctx.Done():
			b.log.Warn("registry index behind the registry; fan-out expanded without its newest records", "applied", b.idxRev.Load(), "stored", last)
			return
		case <-time.After(time.Millisecond):
		}
	}
	b.idxChecked.Store(sent.UnixNano())
}

// refreshQueue bounds the tokens waiting for a registry refresh; more are
// dropped (the next push to them asks again).
const refreshQueue = 1024

// registryTTL is the registry TTL the options ask for, with the default of
// subjects.StreamOptions.
func registryTTL(d time.Duration) time.Duration {
	if d <= 0 {
		return 24 * time.Hour
	}
	return d
}

// maybeRefresh queues a refresh of token's registry record when a push to
// it just succeeded and the record was written more than half the TTL ago:
// a connection that keeps receiving stays registered, while nothing else
// rewrites its record. Off the push path: one goroutine does the KV round
// trips, with at most one refresh queued or in flight per token.
func (b *Bridge) maybeRefresh(token string, now time.Time) {
	written, ok := b.idx.written(token)
	if !ok || written.IsZero() || now.Sub(written) < b.regTTL/2 {
		return
	}
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	if _, busy := b.refreshing[token]; busy {
		return
	}
	select {
	case b.refreshCh <- token:
		b.refreshing[token] = struct{}{}
	default: // full: a later push asks again
	}
}

// refresher rewrites the records maybeRefresh queues.
func (b *Bridge) refresher() {
	defer b.wg.Done()
	for {
		select {
		case <-b.bgCtx.Done():
			return
		case token := <-b.refreshCh:
			b.refresh(token)
			b.refreshMu.Lock()
			delete(b.refreshing, token)
			b.refreshMu.Unlock()
		}
	}
}

// refresh rewrites token's record unchanged, which restarts its TTL. The
// update names the revision read, so a delete or update made meanwhile (a
// disconnect, a group change, another instance's refresh) wins.
func (b *Bridge) refresh(token string) {
	ctx, cancel := context.WithTimeout(b.bgCtx, 5*time.Second)
	defer cancel()
	e, err := b.kv.Get(ctx, token)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
			b.log.Debug("registry refresh: read failed", "token", token, "err", err)
		}
		return
	}
	if time.Since(e.Created()) < b.regTTL/2 {
		b.idx.touch(token, e.Created()) // rewritten meanwhile
		return
	}
	if _, err := b.kv.Update(ctx, token, e.Value(), e.Revision()); err != nil {
		if !isConflict(err) {
			b.log.Debug("registry refresh failed", "token", token, "err", err)
		}
		return
	}
	b.idx.touch(token, time.Now())
}
