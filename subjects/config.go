package subjects

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// EnvPrefix prefixes every configuration variable: the flag --nats-url reads
// WSBRIDGE_NATS_URL, and the functions read the same variables.
const EnvPrefix = "WSBRIDGE_"

// EnvName is the environment variable of a flag name: nats-url ->
// WSBRIDGE_NATS_URL.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Env returns the value of configuration name (NATS_URL, PREFIX, …) from
// getenv, reading EnvPrefix+name. A nil getenv means os.Getenv.
func Env(getenv func(string) string, name string) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	return strings.TrimSpace(getenv(EnvPrefix + name))
}

// ConnOptions are the NATS connection settings of SPEC §4, shared by the
// functions, the bridge and the operator commands.
type ConnOptions struct {
	URL      string // comma-separated seed URLs
	Creds    string // path to a .creds file (JWT + nkey seed)
	NKey     string // path to an nkey seed file
	Token    string
	User     string
	Password string
	TLSCA    string // path to a PEM CA bundle
	TLSCert  string // path to a PEM client certificate
	TLSKey   string // path to the client certificate's key
	Name     string // connection name shown by the server
}

// ConnOptionsFromEnv reads the NATS_* configuration names through Env.
func ConnOptionsFromEnv(getenv func(string) string) ConnOptions {
	return ConnOptions{
		URL:      Env(getenv, "NATS_URL"),
		Creds:    Env(getenv, "NATS_CREDS"),
		NKey:     Env(getenv, "NATS_NKEY"),
		Token:    Env(getenv, "NATS_TOKEN"),
		User:     Env(getenv, "NATS_USER"),
		Password: Env(getenv, "NATS_PASSWORD"),
		TLSCA:    Env(getenv, "NATS_TLS_CA"),
		TLSCert:  Env(getenv, "NATS_TLS_CERT"),
		TLSKey:   Env(getenv, "NATS_TLS_KEY"),
	}
}

// Environ is o as the environment ConnOptionsFromEnv reads (NAME=value,
// each name with EnvPrefix): the URL always, the others when set. Name is
// not configuration and is left out.
func (o ConnOptions) Environ() []string {
	env := []string{EnvPrefix + "NATS_URL=" + o.URL}
	for _, v := range []struct{ name, value string }{
		{"NATS_CREDS", o.Creds}, {"NATS_NKEY", o.NKey}, {"NATS_TOKEN", o.Token},
		{"NATS_USER", o.User}, {"NATS_PASSWORD", o.Password}, {"NATS_TLS_CA", o.TLSCA},
		{"NATS_TLS_CERT", o.TLSCert}, {"NATS_TLS_KEY", o.TLSKey},
	} {
		if v.value != "" {
			env = append(env, EnvPrefix+v.name+"="+v.value)
		}
	}
	return env
}

// Validate reports settings that cannot work together.
func (o ConnOptions) Validate() error {
	var errs []error
	auth := 0
	for _, set := range []bool{o.Creds != "", o.NKey != "", o.Token != "", o.User != ""} {
		if set {
			auth++
		}
	}
	if auth > 1 {
		errs = append(errs, errors.New("nats: set only one of NATS_CREDS, NATS_NKEY, NATS_TOKEN, NATS_USER"))
	}
	if o.Password != "" && o.User == "" {
		errs = append(errs, errors.New("nats: NATS_PASSWORD needs NATS_USER"))
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		errs = append(errs, errors.New("nats: NATS_TLS_CERT and NATS_TLS_KEY go together"))
	}
	return errors.Join(errs...)
}

// NATSOptions turns the settings into nats.go options: authentication, TLS,
// and reconnect behaviour suited to long-lived processes (reconnect forever,
// buffer while reconnecting).
func (o ConnOptions) NATSOptions() ([]nats.Option, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(5 * time.Second),
	}
	if o.Name != "" {
		opts = append(opts, nats.Name(o.Name))
	}
	switch {
	case o.Creds != "":
		opts = append(opts, nats.UserCredentials(o.Creds))
	case o.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(o.NKey)
		if err != nil {
			return nil, fmt.Errorf("nats: nkey seed %s: %w", o.NKey, err)
		}
		opts = append(opts, opt)
	case o.Token != "":
		opts = append(opts, nats.Token(o.Token))
	case o.User != "":
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.TLSCert != "" {
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	return opts, nil
}

// Connect dials NATS with the settings plus extra options (which win).
func (o ConnOptions) Connect(extra ...nats.Option) (*nats.Conn, error) {
	if o.URL == "" {
		return nil, errors.New("nats: no URL (set NATS_URL)")
	}
	opts, err := o.NATSOptions()
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(o.URL, append(opts, extra...)...)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// url.Error quotes the whole URL, password included.
			return nil, fmt.Errorf("nats: connect %s: the URL does not parse (check its escaping)", RedactURL(o.URL))
		}
		return nil, fmt.Errorf("nats: connect %s: %w", RedactURL(o.URL), err)
	}
	return nc, nil
}

// RedactURL hides user info in (comma-separated) URLs so they can be logged,
// with or without a scheme (nats.go accepts "user:pass@host:4222").
func RedactURL(u string) string {
	parts := strings.Split(u, ",")
	for i, p := range parts {
		scheme, rest, ok := strings.Cut(p, "://")
		if !ok {
			scheme, rest = "", p
		}
		at := strings.LastIndex(rest, "@")
		if at < 0 {
			continue
		}
		rest = "redacted@" + rest[at+1:]
		if ok {
			rest = scheme + "://" + rest
		}
		parts[i] = rest
	}
	return strings.Join(parts, ",")
}
