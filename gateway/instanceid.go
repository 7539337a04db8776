package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// claimID makes this instance the only live one with its id before it
// advertises itself: two instances sharing an id (two started with the
// default, the host name, on one machine) would each take the other's
// pushes and sweep the other's connections as lost.
//
// A record of the id that names this instance's push URL is an earlier
// life of this instance (this process holds that address now), swept at
// start as before. A record naming another push URL belongs to a live
// instance when it is refreshed (every third of the TTL); one that ages out
// unrefreshed was an earlier life elsewhere, and the id is free.
func (e *edge) claimID(ctx context.Context, kv jetstream.KeyValue) error {
	self := e.g.opts.InstanceID
	for try := 0; ; try++ {
		if try == claimTries {
			return fmt.Errorf("gateway: --instance-id %s: the id's record kept changing while this instance claimed it; is another instance starting with it?", self)
		}
		_, err := kv.Create(ctx, self, e.record)
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("gateway: claim instance id %s: %w", self, err)
		}
		entry, err := kv.Get(ctx, self)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // aged out meanwhile
		}
		if err != nil {
			return fmt.Errorf("gateway: claim instance id %s: %w", self, err)
		}
		var other subjects.Instance
		_ = json.Unmarshal(entry.Value(), &other)
		if other.PushURL == e.g.opts.PushURL {
			return nil
		}
		e.log.Info("instance id advertised with another push URL; waiting to see whether it is refreshed",
			"instance", self, "push_url", other.PushURL, "started_at", other.StartedAt, "ttl", e.ttl)
		alive, err := e.refreshed(ctx, kv, entry.Revision())
		if err != nil {
			return fmt.Errorf("gateway: claim instance id %s: %w", self, err)
		}
		if alive {
			return duplicateID(self, other)
		}
		// Not refreshed: take it over, unless it changed meanwhile (aged
		// out, or claimed by another instance): then look again.
		if _, err := kv.Update(ctx, self, e.record, entry.Revision()); err == nil {
			return nil
		}
	}
}

// claimTries bounds the rounds of claimID.
const claimTries = 4

func duplicateID(self string, other subjects.Instance) error {
	return fmt.Errorf("gateway: --instance-id %s: a live instance has this id (push URL %s, started %s); give every instance its own --instance-id (the default is the host name, so two instances on one machine need one each)",
		self, other.PushURL, other.StartedAt.Format(time.RFC3339))
}

// refreshed reports whether the record of this instance's id, at revision
// rev, is written again before it ages out: a live instance rewrites it
// every third of the TTL; a dead one's goes within a TTL.
func (e *edge) refreshed(ctx context.Context, kv jetstream.KeyValue, rev uint64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.ttl+e.ttl/2)
	defer cancel()
	t := time.NewTicker(max(e.ttl/20, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Neither refreshed nor aged out within a TTL and a half: not
			// alive, whatever keeps it.
			return false, nil
		case <-t.C:
		}
		entry, err := kv.Get(ctx, e.g.opts.InstanceID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
			return false, nil
		case ctx.Err() != nil:
			return false, nil
		case err != nil:
			return false, err
		case entry.Revision() != rev:
			return true, nil
		}
	}
}
