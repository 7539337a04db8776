package functions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// Register handles the gateway's connecting event. It always answers with a
// registration reply, never an error: errNo 0 accepts the connection with at
// most one subprotocol and no extensions; a non-zero errNo rejects it. A
// connection is accepted only after its registry record and connect event
// are stored, so the backend hears of every connection the gateway keeps.
//
// Rejections: 101 and 102 for events without requestContext or websocket
// (the seed's answers), 400 for other malformed events, the authorizer's
// errNo (403 by default) on denial, 503 when NATS or a required authorizer
// is unreachable, 500 for configuration errors, missing streams and other
// storage failures.
func (f *Functions) Register(ctx context.Context, payload json.RawMessage) (out json.RawMessage, err error) {
	defer recoverTo(&err, f.logger)
	reqID := requestID(ctx)
	ev, err := DecodeEvent(payload)
	if err != nil {
		return f.reject(ctx, err, "", reqID)
	}
	return f.register(ctx, ev, reqID)
}

func (f *Functions) register(ctx context.Context, ev subjects.GatewayEvent, reqID string) (json.RawMessage, error) {
	ce, err := parseConnect(ev, f.now())
	if err != nil {
		return f.reject(ctx, err, "", reqID)
	}
	protocol, err := f.connect(ctx, &ce, reqID)
	if err != nil {
		return f.reject(ctx, err, ce.Token, reqID)
	}
	if l := f.logger(); l != nil {
		l.Debug("connection registered", "token", ce.Token, "user", ce.UserID, "request", reqID)
	}
	return json.Marshal(subjects.GatewayReply{
		ErrNo:  0,
		ErrMsg: "ok",
		WebSocket: &subjects.GatewayWebSocket{
			Action:               subjects.ActionConnecting,
			SecConnectionID:      ce.ConnectionID,
			SecWebSocketProtocol: protocol, // omitted when empty
			// No secWebSocketExtensions: like the seed, wsbridge negotiates
			// none (the gateway would otherwise have to compress).
		},
	})
}

// connect authorizes and stores a connection, returning the subprotocol to
// answer with.
func (f *Functions) connect(ctx context.Context, ce *subjects.ConnectEvent, reqID string) (string, error) {
	cfg, err := f.config(ctx)
	if err != nil {
		return "", err
	}
	bctx, cancel := cfg.bound(ctx)
	defer cancel()
	c, err := f.connection(bctx, cfg)
	if err != nil {
		return "", err
	}
	protocol := ""
	if len(ce.Protocols) > 0 {
		protocol = ce.Protocols[0] // the client's first choice
	}
	if cfg.opts.Auth != AuthOff {
		ar, err := authorize(bctx, c.nc, cfg, ce)
		if err != nil {
			return "", err
		}
		if ar != nil {
			if ar.Protocol != "" {
				protocol = ar.Protocol
			}
			if ar.UserID != "" {
				ce.UserID = ar.UserID
			}
			if ar.Groups != nil {
				ce.Groups = ar.Groups
			}
			if len(ar.State) > 0 && string(ar.State) != "null" {
				ce.State = ar.State
			}
		}
	}
	data, err := json.Marshal(ce)
	if err != nil {
		return "", fmt.Errorf("%w: encode connect event: %w", ErrNotStored, err)
	}
	kv, err := c.registry(bctx, cfg.names)
	if err != nil {
		return "", err
	}
	if _, err := kv.Put(bctx, ce.Token, data); err != nil {
		return "", storeError("registry put "+cfg.names.Bucket(), err)
	}
	if err := c.publish(bctx, cfg.names.Connect(ce.Token), data, ce.ConnectionID, reqID, ""); err != nil {
		// Undo the record so that the registry does not list a connection
		// the gateway is about to refuse. Best effort within what is left of
		// the invocation: the bucket's TTL removes it otherwise.
		if derr := kv.Delete(ctx, ce.Token); derr != nil {
			cfg.log.Warn("registry record of a rejected connection left to expire", "token", ce.Token, "err", derr)
		}
		return "", err
	}
	return protocol, nil
}

// authorize asks P.auth.connect about a connection. It returns the
// authorizer's accepting reply, nil when optional authorization found no
// authorizer, or the rejection.
func authorize(ctx context.Context, nc *nats.Conn, cfg *config, ce *subjects.ConnectEvent) (*subjects.AuthReply, error) {
	subject := cfg.names.AuthConnect()
	data, err := json.Marshal(ce)
	if err != nil {
		return nil, fmt.Errorf("%w: encode connect event: %w", ErrNotStored, err)
	}
	// The authorizer gets at most half of the time left, so that optional
	// authorization that times out still leaves time to store the event.
	wait := cfg.opts.AuthTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	actx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(subjects.HeaderConnID, ce.ConnectionID)
	resp, err := nc.RequestMsgWithContext(actx, m)
	if err != nil {
		why := "no reply"
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			why = "no responder"
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
			why = fmt.Sprintf("no reply within %v", wait.Round(time.Millisecond))
		}
		if cfg.opts.Auth == AuthOptional {
			cfg.log.Info("connect authorization skipped", "subject", subject, "reason", why, "err", err, "token", ce.Token)
			return nil, nil
		}
		return nil, &rejectError{code: CodeUnavailable, msg: fmt.Sprintf("connect authorization required: %s on %s: %v", why, subject, err)}
	}
	var ar subjects.AuthReply
	if err := json.Unmarshal(resp.Data, &ar); err != nil {
		// A broken authorizer is not an absent one: refuse in either mode
		// rather than let a garbled answer grant access.
		return nil, &rejectError{code: CodeInternal, msg: fmt.Sprintf("connect authorization: reply on %s is not an auth reply: %v", subject, err)}
	}
	if !ar.Allow {
		code, msg := ar.ErrNo, ar.ErrMsg
		if code == 0 {
			code = CodeForbidden
		}
		if msg == "" {
			msg = "connection not authorized"
		}
		return nil, &rejectError{code: code, msg: msg}
	}
	// userId and groups become subject tokens (P.out.user.U, P.out.group.G);
	// an authorizer answering names that cannot be is refused loudly here
	// rather than leaving a connection nobody can address.
	if ar.UserID != "" {
		if err := subjects.ValidName(ar.UserID); err != nil {
			return nil, &rejectError{code: CodeInternal, msg: fmt.Sprintf("connect authorization: userId: %v", err)}
		}
	}
	// A set, like every writer of the registry keeps it: a group twice
	// would need removing twice.
	groups, err := subjects.Groups(ar.Groups)
	if err != nil {
		return nil, &rejectError{code: CodeInternal, msg: fmt.Sprintf("connect authorization: %v", err)}
	}
	if ar.Groups != nil {
		ar.Groups = groups
	}
	// The gateway answers with exactly one subprotocol, and a browser fails
	// the handshake on one it did not offer: refuse both here, clearly.
	if ar.Protocol != "" && !slices.Contains(ce.Protocols, ar.Protocol) {
		return nil, &rejectError{code: CodeInternal, msg: fmt.Sprintf("connect authorization: protocol %q is not one the client offered %q", ar.Protocol, ce.Protocols)}
	}
	return &ar, nil
}

// reject answers a registration with a non-zero errNo and logs why.
func (f *Functions) reject(ctx context.Context, err error, token, reqID string) (json.RawMessage, error) {
	reply := subjects.GatewayReply{ErrNo: errNo(err), ErrMsg: err.Error()}
	var re *rejectError
	if errors.As(err, &re) {
		reply.ErrNo, reply.ErrMsg = re.code, re.msg
	}
	if l := f.logger(); l != nil {
		level := slog.LevelWarn
		if reply.ErrNo < 500 {
			level = slog.LevelInfo // the client's or the authorizer's doing
		}
		l.Log(ctx, level, "connection rejected", "errNo", reply.ErrNo, "errMsg", reply.ErrMsg, "token", token, "request", reqID)
	}
	return json.Marshal(reply)
}
