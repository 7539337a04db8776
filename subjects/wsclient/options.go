package wsclient

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// Defaults of Options; a zero field takes its default.
const (
	DefaultMinBackoff       = 100 * time.Millisecond
	DefaultMaxBackoff       = 5 * time.Second
	DefaultAckEvery         = 32
	DefaultAckAfter         = time.Second
	DefaultSendBuffer       = 1024
	DefaultReadBuffer       = 1024
	DefaultReadLimit        = 1 << 20
	DefaultHandshakeTimeout = 10 * time.Second
)

// Options configure a Client. Zero values take the defaults in brackets.
type Options struct {
	// Header is sent with every upgrade, the first and each reconnect
	// (Origin, auth cookies…).
	Header http.Header
	// HTTPClient makes the upgrades [http.DefaultClient].
	HTTPClient *http.Client
	// Subprotocols are offered (Sec-WebSocket-Protocol) when a session
	// starts; the register function chooses. A resume offers the one chosen
	// then, alone, as the gateway expects.
	Subprotocols []string
	// NoResume asks for a plain connection: the protocol without sessions,
	// no prefixes, no reconnect. The client is over when its socket ends.
	NoResume bool
	// MinBackoff is the ceiling of the first reconnect delay [100ms]; the
	// ceiling doubles with each failed attempt up to MaxBackoff [5s], and
	// each delay is drawn uniformly below it (full jitter), so clients cut
	// off together do not return together.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// AckEvery: the client acknowledges received data messages after this
	// many [32], or AckAfter [1s] after the first one not acknowledged,
	// whichever comes first. The gateway keeps what was not acknowledged
	// (up to --resume-buffer), so a client that never acks ends its session.
	AckEvery int
	AckAfter time.Duration
	// SendBuffer bounds the data messages sent and not yet acknowledged by
	// the gateway [1024]: they are kept to be sent again after a resume.
	// Send blocks while it is full.
	SendBuffer int
	// ReadBuffer bounds the received messages not yet taken by Read [1024];
	// the socket is not read while it is full.
	ReadBuffer int
	// ReadLimit is the largest message accepted from the gateway, in bytes,
	// without the session prefix [1 MiB]; a larger one ends the socket with
	// 1009. The gateway's own --max-message-size is 128 KiB by default.
	ReadLimit int64
	// HandshakeTimeout bounds an upgrade and, in session mode, the wait for
	// its welcome [10s]. A gateway without sessions never sends a welcome:
	// this is how long Dial takes to say so.
	HandshakeTimeout time.Duration
	// OnEvent is called for every Event, in order, from one goroutine of
	// the client's. It must not block long: later events wait for it.
	OnEvent func(Event)
	// Logger gets the client's log lines [discard].
	Logger *slog.Logger
}

// Validate reports the first option that cannot be used.
func (o Options) Validate() error {
	switch {
	case o.MinBackoff < 0:
		return fmt.Errorf("wsclient: MinBackoff %v is negative", o.MinBackoff)
	case o.MaxBackoff < 0:
		return fmt.Errorf("wsclient: MaxBackoff %v is negative", o.MaxBackoff)
	case o.MinBackoff > 0 && o.MaxBackoff > 0 && o.MaxBackoff < o.MinBackoff:
		return fmt.Errorf("wsclient: MaxBackoff %v is below MinBackoff %v", o.MaxBackoff, o.MinBackoff)
	case o.AckEvery < 0:
		return fmt.Errorf("wsclient: AckEvery %d is negative", o.AckEvery)
	case o.AckAfter < 0:
		return fmt.Errorf("wsclient: AckAfter %v is negative", o.AckAfter)
	case o.SendBuffer < 0:
		return fmt.Errorf("wsclient: SendBuffer %d is negative", o.SendBuffer)
	case o.ReadBuffer < 0:
		return fmt.Errorf("wsclient: ReadBuffer %d is negative", o.ReadBuffer)
	case o.ReadLimit < 0:
		return fmt.Errorf("wsclient: ReadLimit %d is negative", o.ReadLimit)
	case o.HandshakeTimeout < 0:
		return fmt.Errorf("wsclient: HandshakeTimeout %v is negative", o.HandshakeTimeout)
	}
	return nil
}

// withDefaults fills the zero fields. A MinBackoff above the default
// MaxBackoff raises MaxBackoff to it rather than failing: only two explicit
// values can contradict each other.
func (o Options) withDefaults() Options {
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.AckEvery == 0 {
		o.AckEvery = DefaultAckEvery
	}
	if o.AckAfter == 0 {
		o.AckAfter = DefaultAckAfter
	}
	if o.SendBuffer == 0 {
		o.SendBuffer = DefaultSendBuffer
	}
	if o.ReadBuffer == 0 {
		o.ReadBuffer = DefaultReadBuffer
	}
	if o.ReadLimit == 0 {
		o.ReadLimit = DefaultReadLimit
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}
