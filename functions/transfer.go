package functions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// okReply is the answer of a successful transfer or cleanup.
var okReply = json.RawMessage(`{"errNo":0,"errMsg":"ok"}`)

// Transfer handles a data event ("data send" or "data recv"): it publishes
// the client's message, base64 decoded when binary, to P.in.message.T and
// waits for JetStream's ack. Any failure is returned as an error, which
// fails the invocation and makes the gateway close the client: a message is
// stored or the client knows, never silently dropped. Errors wrap
// ErrBadEvent, ErrTooLarge, ErrConfig, ErrUnavailable, ErrNotProvisioned or
// ErrNotStored.
func (f *Functions) Transfer(ctx context.Context, payload json.RawMessage) (out json.RawMessage, err error) {
	defer recoverTo(&err, f.logger)
	ev, err := DecodeEvent(payload)
	if err != nil {
		return nil, err
	}
	return f.transfer(ctx, ev, requestID(ctx))
}

func (f *Functions) transfer(ctx context.Context, ev subjects.GatewayEvent, reqID string) (json.RawMessage, error) {
	cfg, err := f.config(ctx)
	if err != nil {
		return nil, err
	}
	m, err := parseData(ev, cfg.opts.MaxMessageSize)
	if err != nil {
		return nil, err
	}
	bctx, cancel := cfg.bound(ctx)
	defer cancel()
	c, err := f.connection(bctx, cfg)
	if err != nil {
		return nil, err
	}
	if room := c.nc.MaxPayload() - MessageHeadroom; int64(len(m.data)) > room {
		// Over what the server stores: say so, rather than fail the
		// publish with a store error.
		return nil, fmt.Errorf("%w: %s message of %d bytes, the NATS server stores at most %d (its max_payload less %d for headers)",
			ErrTooLarge, m.dataType, len(m.data), room, MessageHeadroom)
	}
	if err := c.publish(bctx, cfg.names.Message(m.token), m.data, m.connID, reqID, m.dataType); err != nil {
		return nil, err
	}
	return okReply, nil
}

// Cleanup handles a closing event: it deletes the connection's registry
// record and publishes P.in.disconnect.T with reason "client". Both are
// attempted; a failure of either is returned as an error so that it shows in
// the function's logs (the bucket's TTL is the safety net for the record).
func (f *Functions) Cleanup(ctx context.Context, payload json.RawMessage) (out json.RawMessage, err error) {
	defer recoverTo(&err, f.logger)
	ev, err := DecodeEvent(payload)
	if err != nil {
		return nil, err
	}
	return f.cleanup(ctx, ev, requestID(ctx))
}

func (f *Functions) cleanup(ctx context.Context, ev subjects.GatewayEvent, reqID string) (json.RawMessage, error) {
	id, err := parseClosing(ev)
	if err != nil {
		return nil, err
	}
	cfg, err := f.config(ctx)
	if err != nil {
		return nil, err
	}
	bctx, cancel := cfg.bound(ctx)
	defer cancel()
	c, err := f.connection(bctx, cfg)
	if err != nil {
		return nil, err
	}
	token := subjects.Token(id)
	// Delete before announcing, so that a service reacting to the
	// disconnect no longer finds the connection in the registry. The
	// record says when a backend asked for the close (the bridge marks it
	// before pushing the close): the reason is then "closed", and the
	// bridge's own announcement and this one are stored once.
	reason := subjects.ReasonClient
	var delErr error
	if kv, err := c.registry(bctx, cfg.names); err != nil {
		delErr = err
	} else {
		reason = closingReason(bctx, kv, token)
		if err := kv.Delete(bctx, token); err != nil {
			delErr = storeError("registry delete "+cfg.names.Bucket(), err)
		}
	}
	m, err := cfg.names.DisconnectMsg(token, reason, f.now())
	if err != nil {
		return nil, err
	}
	var pubErr error
	if _, err := c.js.PublishMsg(bctx, m); err != nil {
		pubErr = storeError("publish "+m.Subject, err)
	}
	if err := errors.Join(delErr, pubErr); err != nil {
		return nil, err
	}
	return okReply, nil
}

// WebSocket serves all three roles from one function, for single-function
// deployments: it dispatches on websocket.action to Register, Transfer or
// Cleanup and answers as they do. An event without websocket gets the
// seed's errNo 102 reply; an unknown action is an ErrBadEvent error.
func (f *Functions) WebSocket(ctx context.Context, payload json.RawMessage) (out json.RawMessage, err error) {
	defer recoverTo(&err, f.logger)
	reqID := requestID(ctx)
	ev, err := DecodeEvent(payload)
	if err != nil {
		return nil, err
	}
	if ev.WebSocket == nil {
		return f.reject(ctx, errNoWebSocket, "", reqID)
	}
	switch ev.WebSocket.Action {
	case subjects.ActionConnecting:
		return f.register(ctx, ev, reqID)
	case subjects.ActionDataSend, subjects.ActionDataRecv:
		return f.transfer(ctx, ev, reqID)
	case subjects.ActionClosing:
		return f.cleanup(ctx, ev, reqID)
	}
	return nil, fmt.Errorf("%w: websocket.action %q, want connecting, data send, data recv or closing", ErrBadEvent, clip(ev.WebSocket.Action))
}

// closingReason is the disconnect reason a closing event reports: the one
// the record's Closing mark names, else "client". A record that cannot be
// read counts as unmarked.
func closingReason(ctx context.Context, kv jetstream.KeyValue, token string) string {
	e, err := kv.Get(ctx, token)
	if err != nil {
		return subjects.ReasonClient
	}
	var rec struct {
		Closing string `json:"closing"`
	}
	if json.Unmarshal(e.Value(), &rec) == nil && rec.Closing != "" && len(rec.Closing) <= 32 {
		return rec.Closing
	}
	return subjects.ReasonClient
}
