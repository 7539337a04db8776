package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/wsbridge/wsbridge/subjects"
)

// newFlagSet returns a subcommand's flag set whose --help lists, beside each
// flag, the environment variable that also sets it.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("wsbridge "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: wsbridge %s [flags]%s\n\nflags (each also read from the environment variable shown):\n", name, synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" {
				def = fmt.Sprintf(" (default %q)", f.DefValue)
			}
			fmt.Fprintf(stderr, "  --%s  [%s]\n      %s%s\n", f.Name, envName(f.Name), f.Usage, def)
		})
	}
	return fs
}

// envName maps a flag name to its environment variable: nats-url -> WSBRIDGE_NATS_URL.
func envName(flagName string) string { return subjects.EnvName(flagName) }

// parseFlags parses args; then every flag not given on the command line takes
// its environment variable, when set. Command-line flags win over the
// environment, which wins over defaults. It returns flag.ErrHelp for --help.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		v, ok := lookup(getenv, envName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
		}
	})
	return errors.Join(errs...)
}

// flagSet reports whether the flag name was given, on the command line or
// through its environment variable (parseFlags sets both).
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// connFlags registers the NATS connection flags of SPEC §4.
func connFlags(fs *flag.FlagSet, o *subjects.ConnOptions) {
	fs.StringVar(&o.URL, "nats-url", o.URL, "NATS server URLs, comma separated")
	fs.StringVar(&o.Creds, "nats-creds", o.Creds, "path to a NATS .creds file")
	fs.StringVar(&o.NKey, "nats-nkey", o.NKey, "path to an nkey seed file")
	fs.StringVar(&o.Token, "nats-token", o.Token, "NATS authentication token")
	fs.StringVar(&o.User, "nats-user", o.User, "NATS user")
	fs.StringVar(&o.Password, "nats-password", o.Password, "NATS password")
	fs.StringVar(&o.TLSCA, "nats-tls-ca", o.TLSCA, "PEM CA bundle to verify the NATS server")
	fs.StringVar(&o.TLSCert, "nats-tls-cert", o.TLSCert, "PEM client certificate for NATS")
	fs.StringVar(&o.TLSKey, "nats-tls-key", o.TLSKey, "PEM key of the client certificate")
}

// exitCode maps a flag parsing error to an exit code: 0 for --help, 2 else.
func exitCode(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
