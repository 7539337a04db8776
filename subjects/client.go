package subjects

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Client is the Go API of a business service: it sends to WebSocket clients
// through the outbound subjects and decodes the inbound events. Every send is
// acknowledged by JetStream, so a nil error means the command is stored in
// WS_OUT and the bridge will deliver it or dead-letter it.
type Client struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	names Names
}

// NewClient wraps a NATS connection for the prefix ("" means DefaultPrefix).
func NewClient(nc *nats.Conn, prefix string) (*Client, error) {
	if nc == nil {
		return nil, errors.New("subjects: nil NATS connection")
	}
	n, err := New(prefix)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Client{nc: nc, js: js, names: n}, nil
}

// Names returns the client's subject names.
func (c *Client) Names() Names { return c.names }

// JetStream returns the client's JetStream context.
func (c *Client) JetStream() jetstream.JetStream { return c.js }

// SendOption adjusts one outbound command.
type SendOption func(*nats.Msg)

// Binary marks the payload as binary: the gateway receives it base64 encoded
// with dataType binary, and the client gets a binary frame.
func Binary() SendOption {
	return func(m *nats.Msg) { m.Header.Set(HeaderDataType, DataBinary) }
}

// Exclude skips the given connection tokens in a broadcast, group or user send.
func Exclude(tokens ...string) SendOption {
	return func(m *nats.Msg) {
		if len(tokens) > 0 {
			m.Header.Set(HeaderExclude, strings.Join(tokens, ","))
		}
	}
}

// MsgID sets Nats-Msg-Id so a retried publish is stored once.
func MsgID(id string) SendOption {
	return func(m *nats.Msg) { m.Header.Set(HeaderMsgID, id) }
}

func (c *Client) publish(ctx context.Context, subject string, data []byte, opts []SendOption) error {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	for _, o := range opts {
		o(m)
	}
	if ex := m.Header.Get(HeaderExclude); len(ex) > MaxExcludeLen {
		// The bridge would dead-letter it; say so before it is stored.
		return fmt.Errorf("%s of %d bytes, limit %d", HeaderExclude, len(ex), MaxExcludeLen)
	}
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// Send pushes data to one connection, identified by its token.
func (c *Client) Send(ctx context.Context, token string, data []byte, opts ...SendOption) error {
	if _, err := ConnID(token); err != nil {
		return err
	}
	return c.publish(ctx, c.names.Send(token), data, opts)
}

// SendText pushes a text frame to one connection.
func (c *Client) SendText(ctx context.Context, token, text string) error {
	return c.Send(ctx, token, []byte(text))
}

// SendBinary pushes a binary frame to one connection.
func (c *Client) SendBinary(ctx context.Context, token string, data []byte) error {
	return c.Send(ctx, token, data, Binary())
}

// Close asks the gateway to close one connection.
func (c *Client) Close(ctx context.Context, token string) error {
	if _, err := ConnID(token); err != nil {
		return err
	}
	return c.publish(ctx, c.names.Close(token), nil, nil)
}

// Broadcast pushes data to every registered connection.
func (c *Client) Broadcast(ctx context.Context, data []byte, opts ...SendOption) error {
	return c.publish(ctx, c.names.Broadcast(), data, opts)
}

// SendGroup pushes data to every connection in a group.
func (c *Client) SendGroup(ctx context.Context, group string, data []byte, opts ...SendOption) error {
	if err := ValidName(group); err != nil {
		return fmt.Errorf("group: %w", err)
	}
	return c.publish(ctx, c.names.Group(group), data, opts)
}

// SendUser pushes data to every connection of a user.
func (c *Client) SendUser(ctx context.Context, user string, data []byte, opts ...SendOption) error {
	if err := ValidName(user); err != nil {
		return fmt.Errorf("user: %w", err)
	}
	return c.publish(ctx, c.names.User(user), data, opts)
}

// Event is a decoded inbound event.
type Event struct {
	Kind         Kind   // KindConnect, KindMessage or KindDisconnect
	Token        string // connection token
	ConnectionID string // the gateway's secConnectionID
	// Data is the client's message (KindMessage), raw bytes.
	Data []byte
	// Binary reports a binary frame (KindMessage).
	Binary bool
	// Connect is set for KindConnect.
	Connect *ConnectEvent
	// Disconnect is set for KindDisconnect.
	Disconnect *DisconnectEvent
}

// DecodeEvent decodes an inbound message of P.in.>.
func (n Names) DecodeEvent(subject string, header nats.Header, data []byte) (Event, error) {
	s, err := n.Parse(subject)
	if err != nil {
		return Event{}, err
	}
	if s.Dir != In {
		return Event{}, fmt.Errorf("%w %q: not an inbound event", ErrBadSubject, clip(subject))
	}
	id, _ := ConnID(s.Token) // Parse checked it
	ev := Event{Kind: s.Kind, Token: s.Token, ConnectionID: id}
	switch s.Kind {
	case KindMessage:
		ev.Data = data
		ev.Binary = header.Get(HeaderDataType) == DataBinary
	case KindConnect:
		ev.Connect = new(ConnectEvent)
		if err := json.Unmarshal(data, ev.Connect); err != nil {
			return Event{}, fmt.Errorf("decode connect event on %s: %w", subject, err)
		}
	case KindDisconnect:
		ev.Disconnect = new(DisconnectEvent)
		if err := json.Unmarshal(data, ev.Disconnect); err != nil {
			return Event{}, fmt.Errorf("decode disconnect event on %s: %w", subject, err)
		}
	}
	return ev, nil
}

// EventHandler handles one decoded inbound event.
type EventHandler func(Event)

// ErrorHandler is told about inbound messages that could not be decoded.
type ErrorHandler func(subject string, err error)

// Subscribe receives inbound events on a core NATS subscription: fast, no
// replay, events published while the service is down are not seen. Undecodable
// messages go to onErr when given. Use Consume for at-least-once delivery.
func (c *Client) Subscribe(h EventHandler, onErr ...ErrorHandler) (*nats.Subscription, error) {
	return c.nc.Subscribe(c.names.Inbound(), func(m *nats.Msg) {
		ev, err := c.names.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			for _, f := range onErr {
				f(m.Subject, err)
			}
			return
		}
		h(ev)
	})
}

// ConsumeHandler handles one event from a durable consumer; a nil error acks
// it, an error redelivers it after RetryDelay.
type ConsumeHandler func(context.Context, Event) error

// RetryDelay is how long Consume waits before redelivering an event whose
// handler failed, so a failing handler does not spin.
const RetryDelay = time.Second

// Consume receives inbound events through a durable JetStream consumer on
// WS_IN named durable: events are replayed after a restart, and several
// instances sharing the durable split the work. ctx bounds creating the
// consumer; handlers get a context that ends when the returned
// ConsumeContext stops. Undecodable messages are terminated (they would
// never decode) and reported to onErr when given.
func (c *Client) Consume(ctx context.Context, durable string, h ConsumeHandler, onErr ...ErrorHandler) (jetstream.ConsumeContext, error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, c.names.StreamIn(), jetstream.ConsumerConfig{
		Durable:       durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		FilterSubject: c.names.Inbound(),
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", durable, c.names.StreamIn(), err)
	}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := c.names.DecodeEvent(m.Subject(), m.Headers(), m.Data())
		if err != nil {
			for _, f := range onErr {
				f(m.Subject(), err)
			}
			_ = m.TermWithReason(err.Error())
			return
		}
		if err := h(hctx, ev); err != nil {
			_ = m.NakWithDelay(RetryDelay)
			return
		}
		_ = m.Ack()
	})
	if err != nil {
		cancel()
		return nil, err
	}
	go func() {
		<-cc.Closed()
		cancel()
	}()
	return cc, nil
}
