package functions

import (
	"context"
	"encoding/json"
	"fmt"

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
// record and publishes P.in.disconnect.T with reason "client" (or "closed"
// for a close a backend asked for), unless the record was already deleted
// by whoever announced the disconnect first: one event per connection
// (subjects.Names.Forget). A failure is returned as an error so that it
// shows in the function's logs (the bucket's TTL is the safety net).
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
	// Whoever deletes the record announces the disconnect (Names.Forget):
	// when the bridge closed the connection, or found it gone, it already
	// did, and this cleanup publishes nothing. A close a backend asked for
	// is marked on the record before the bridge pushes it, so when this
	// cleanup wins the race the reason is still "closed".
	kv, err := c.registry(bctx, cfg.names)
	if err != nil {
		return nil, err
	}
	if _, err := cfg.names.Forget(bctx, c.js, kv, token, subjects.ReasonClient, f.now()); err != nil {
		return nil, storeError("disconnect", err)
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
