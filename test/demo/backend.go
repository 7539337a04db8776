package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// publishTimeout bounds one JetStream publish; a stuck publish must not
// stall the events queued behind it for long.
const publishTimeout = 5 * time.Second

// Welcome is sent to a connection when it connects. It names the subjects
// that reach this connection, so the page can show the nats CLI lines for it.
type Welcome struct {
	Type         string `json:"type"` // "welcome"
	Token        string `json:"token"`
	ConnectionID string `json:"connectionId"`
	Send         string `json:"send"`      // P.out.send.T
	Close        string `json:"close"`     // P.out.close.T
	Broadcast    string `json:"broadcast"` // P.out.broadcast
}

// Echo is sent back to the sender of a message.
type Echo struct {
	Type string `json:"type"` // "echo"
	Text string `json:"text"`
}

// Chat is broadcast to every connection but the sender's.
type Chat struct {
	Type string `json:"type"` // "chat"
	From string `json:"from"` // the sender's token
	Text string `json:"text"`
}

// Backend is the demo's business service: it welcomes each connection,
// echoes every message to its sender and broadcasts it to everyone else.
type Backend struct {
	client *subjects.Client
	log    *slog.Logger

	mu     sync.Mutex
	sub    *nats.Subscription
	ctx    context.Context
	cancel context.CancelFunc
}

// NewBackend returns a backend for the wsbridge prefix ("" means the
// default); a nil logger discards.
func NewBackend(nc *nats.Conn, prefix string, logger *slog.Logger) (*Backend, error) {
	c, err := subjects.NewClient(nc, prefix)
	if err != nil {
		return nil, fmt.Errorf("demo backend: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Backend{client: c, log: logger.With("component", "demo")}, nil
}

// Start subscribes to the inbound events. It uses a core subscription, not a
// durable consumer: a chat demo has nothing to replay, and it then works
// whether or not the streams exist yet. Events are handled one at a time,
// in order. Stop (or the end of ctx) stops publishing.
func (b *Backend) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sub != nil {
		return errors.New("demo backend: already started")
	}
	b.ctx, b.cancel = context.WithCancel(ctx)
	sub, err := b.client.Subscribe(b.handle, func(subject string, err error) {
		b.log.Warn("undecodable event", "subject", subject, "err", err)
	})
	if err != nil {
		b.cancel()
		return fmt.Errorf("demo backend: subscribe %s: %w", b.client.Names().Inbound(), err)
	}
	b.sub = sub
	b.log.Info("demo backend started", "subject", b.client.Names().Inbound())
	return nil
}

// Stop unsubscribes, letting the event in hand finish; it is idempotent.
func (b *Backend) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sub == nil {
		return
	}
	if err := b.sub.Drain(); err != nil {
		_ = b.sub.Unsubscribe()
	}
	b.cancel()
	b.sub = nil
}

func (b *Backend) handle(ev subjects.Event) {
	ctx, cancel := context.WithTimeout(b.ctx, publishTimeout)
	defer cancel()
	log := b.log.With("token", ev.Token)
	switch ev.Kind {
	case subjects.KindConnect:
		log.Info("client connected")
		n := b.client.Names()
		w := Welcome{Type: "welcome", Token: ev.Token, ConnectionID: ev.ConnectionID,
			Send: n.Send(ev.Token), Close: n.Close(ev.Token), Broadcast: n.Broadcast()}
		b.publish(log, "welcome", w,
			func(body []byte) error { return b.client.Send(ctx, ev.Token, body) })
	case subjects.KindMessage:
		text := string(ev.Data)
		b.publish(log, "echo", Echo{Type: "echo", Text: text},
			func(body []byte) error { return b.client.Send(ctx, ev.Token, body) })
		b.publish(log, "broadcast", Chat{Type: "chat", From: ev.Token, Text: text},
			func(body []byte) error { return b.client.Broadcast(ctx, body, subjects.Exclude(ev.Token)) })
	case subjects.KindDisconnect:
		reason := ""
		if ev.Disconnect != nil {
			reason = ev.Disconnect.Reason
		}
		log.Info("client disconnected", "reason", reason)
	}
}

// publish encodes msg and hands it to send; failures are logged, because a
// chat line that cannot be delivered is not worth stopping the service for.
func (b *Backend) publish(log *slog.Logger, what string, msg any, send func([]byte) error) {
	body, err := json.Marshal(msg)
	if err == nil {
		err = send(body)
	}
	if err != nil {
		log.Warn("demo backend: "+what+" failed", "err", err)
	}
}
