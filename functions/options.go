package functions

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// AuthMode is the connect authorization mode (SPEC §3, configuration AUTH).
type AuthMode string

// Connect authorization modes.
const (
	// AuthOff accepts every well-formed connect without asking anyone.
	AuthOff AuthMode = "off"
	// AuthOptional asks P.auth.connect; no responder or a timeout accepts.
	AuthOptional AuthMode = "optional"
	// AuthRequired asks P.auth.connect; no responder or a timeout rejects.
	AuthRequired AuthMode = "required"
)

// MessageHeadroom is what an inbound message's headers and framing may take
// of the server's max_payload (Ws-Connection-Id, Nats-Msg-Id, Ws-Data-Type:
// well under 1 KiB); a client message must fit in the rest.
const MessageHeadroom = 4 << 10

// Defaults of Options.
const (
	DefaultAuthTimeout    = 2 * time.Second
	DefaultMaxMessageSize = 1<<20 - MessageHeadroom // NATS' default max_payload less the headers' room, decoded bytes
	DefaultTimeout        = 10 * time.Second
	DefaultLogLevel       = "info"
	DefaultLogFormat      = "text"

	// maxMessageSizeLimit is NATS's own hard ceiling on a message payload;
	// a larger setting could never be honoured.
	maxMessageSizeLimit = 64 << 20
)

// Configuration names read by OptionsFromEnv, each prefixed with
// subjects.EnvPrefix (WSBRIDGE_). The NATS_* names are read by
// subjects.ConnOptionsFromEnv.
const (
	EnvPrefix         = "PREFIX"
	EnvAuth           = "AUTH"
	EnvAuthTimeout    = "AUTH_TIMEOUT"
	EnvMaxMessageSize = "MAX_MESSAGE_SIZE"
	EnvLogLevel       = "LOG_LEVEL"
	EnvLogFormat      = "LOG_FORMAT"
)

// Options configure the functions. The zero value is not valid; start from
// DefaultOptions or OptionsFromEnv.
type Options struct {
	// NATS is how to reach NATS when New is given no connection. Its URL is
	// required then (functions have no embedded server).
	NATS subjects.ConnOptions
	// Prefix is the subject prefix ("" means subjects.DefaultPrefix).
	Prefix string
	// Auth is the connect authorization mode.
	Auth AuthMode
	// AuthTimeout bounds the wait for the P.auth.connect reply; the
	// invocation's deadline bounds it further.
	AuthTimeout time.Duration
	// MaxMessageSize is the largest client message, in bytes after base64
	// decoding, that transfer accepts. Larger messages fail the invocation.
	MaxMessageSize int
	// Timeout bounds the NATS calls of an invocation whose context carries
	// no deadline (SCF always sets one; in-process callers may not).
	Timeout time.Duration
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// LogFormat is text or json.
	LogFormat string
	// Logger receives the functions' log lines; nil builds one on stderr
	// from LogLevel and LogFormat.
	Logger *slog.Logger
}

// DefaultOptions returns the defaults: prefix ws, auth off, 2 s auth
// timeout, messages up to 1 MiB less MessageHeadroom, info logs as text.
func DefaultOptions() Options {
	return Options{
		Prefix:         subjects.DefaultPrefix,
		Auth:           AuthOff,
		AuthTimeout:    DefaultAuthTimeout,
		MaxMessageSize: DefaultMaxMessageSize,
		Timeout:        DefaultTimeout,
		LogLevel:       DefaultLogLevel,
		LogFormat:      DefaultLogFormat,
	}
}

// Validate reports every setting that cannot work, naming the environment
// variable that sets it.
func (o Options) Validate() error {
	var errs []error
	env := func(name string) string { return subjects.EnvPrefix + name }
	if _, err := subjects.New(o.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", env(EnvPrefix), err))
	}
	switch o.Auth {
	case AuthOff, AuthOptional, AuthRequired:
	default:
		errs = append(errs, fmt.Errorf("%s=%q: want off, optional or required", env(EnvAuth), o.Auth))
	}
	if o.AuthTimeout <= 0 {
		errs = append(errs, fmt.Errorf("%s=%v: must be positive", env(EnvAuthTimeout), o.AuthTimeout))
	}
	if o.MaxMessageSize <= 0 || o.MaxMessageSize > maxMessageSizeLimit {
		errs = append(errs, fmt.Errorf("%s=%d: want 1 to %d bytes", env(EnvMaxMessageSize), o.MaxMessageSize, maxMessageSizeLimit))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %v: must be positive", o.Timeout))
	}
	if _, err := parseLevel(o.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", env(EnvLogLevel), err))
	}
	if o.LogFormat != "text" && o.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("%s=%q: want text or json", env(EnvLogFormat), o.LogFormat))
	}
	if err := o.NATS.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// OptionsFromEnv reads the configuration names of SPEC §4 (WSBRIDGE_NATS_*,
// WSBRIDGE_PREFIX, WSBRIDGE_AUTH, WSBRIDGE_AUTH_TIMEOUT, WSBRIDGE_LOG_LEVEL,
// WSBRIDGE_LOG_FORMAT) and WSBRIDGE_MAX_MESSAGE_SIZE through getenv (nil
// means os.Getenv) over DefaultOptions, and validates the result. Unset or
// empty variables keep their defaults.
func OptionsFromEnv(getenv func(string) string) (Options, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	o := DefaultOptions()
	o.NATS = subjects.ConnOptionsFromEnv(getenv)
	var errs []error
	if v := subjects.Env(getenv, EnvPrefix); v != "" {
		o.Prefix = v
	}
	if v := subjects.Env(getenv, EnvAuth); v != "" {
		o.Auth = AuthMode(strings.ToLower(v))
	}
	if v := subjects.Env(getenv, EnvAuthTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s%s=%q: want a duration such as 2s or 500ms", subjects.EnvPrefix, EnvAuthTimeout, v))
		} else {
			o.AuthTimeout = d
		}
	}
	if v := subjects.Env(getenv, EnvMaxMessageSize); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s%s=%q: want a number of bytes", subjects.EnvPrefix, EnvMaxMessageSize, v))
		} else {
			o.MaxMessageSize = n
		}
	}
	if v := subjects.Env(getenv, EnvLogLevel); v != "" {
		o.LogLevel = strings.ToLower(v)
	}
	if v := subjects.Env(getenv, EnvLogFormat); v != "" {
		o.LogFormat = strings.ToLower(v)
	}
	if len(errs) == 0 {
		if err := o.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return o, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return o, nil
}

func parseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
}

// logger returns o.Logger or builds one on w from LogLevel and LogFormat.
func (o Options) logger(w io.Writer) *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	level, _ := parseLevel(o.LogLevel) // validated
	ho := &slog.HandlerOptions{Level: level}
	if o.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}
