package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
)

// functionStartTimeout bounds starting one function binary, until it
// answers Function.Ping.
const functionStartTimeout = 20 * time.Second

// FunctionsOptions say how to run the three function roles a gateway
// invokes.
type FunctionsOptions struct {
	// Dir is "" to run the handlers in process (on Conn), a directory
	// holding the register, transfer and cleanup binaries, or the path of
	// the single websocket binary. Binaries serve SCF's net/rpc on a
	// loopback listener handed to them (StartBinary), and get the
	// environment of SPEC §4 pointing at NATSURL.
	Dir string
	// Functions are the handlers' settings (prefix, auth, message size);
	// its NATS is what binaries are told (URL and credentials).
	Functions functions.Options
	// Conn is the NATS connection in-process handlers use.
	Conn *nats.Conn
}

// Functions are running function roles: Apply them to a gateway's Options,
// Close them after the gateway.
type Functions struct {
	Register, Transfer, Cleanup functions.Invoker

	inproc *functions.Functions
	rpcs   []*RPCInvoker
}

// StartFunctions starts the three roles as o says.
func StartFunctions(ctx context.Context, o FunctionsOptions) (_ *Functions, err error) {
	f := &Functions{}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if o.Dir == "" {
		fns, err := functions.New(o.Functions, o.Conn)
		if err != nil {
			return nil, err
		}
		f.inproc = fns
		f.Register = fns.Invoker(functions.RoleRegister)
		f.Transfer = fns.Invoker(functions.RoleTransfer)
		f.Cleanup = fns.Invoker(functions.RoleCleanup)
		return f, nil
	}
	fi, err := os.Stat(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("functions: %w", err)
	}
	env := functionEnv(o.Functions)
	start := func(path string) (*RPCInvoker, error) {
		sctx, cancel := context.WithTimeout(ctx, functionStartTimeout)
		defer cancel()
		inv, err := StartBinary(sctx, path, env)
		if err != nil {
			return nil, fmt.Errorf("function %s: %w", path, err)
		}
		f.rpcs = append(f.rpcs, inv)
		return inv, nil
	}
	if !fi.IsDir() {
		inv, err := start(o.Dir)
		if err != nil {
			return nil, err
		}
		f.Register, f.Transfer, f.Cleanup = inv, inv, inv
		return f, nil
	}
	for _, role := range []struct {
		name string
		dst  *functions.Invoker
	}{{"register", &f.Register}, {"transfer", &f.Transfer}, {"cleanup", &f.Cleanup}} {
		inv, err := start(filepath.Join(o.Dir, role.name))
		if err != nil {
			return nil, err
		}
		*role.dst = inv
	}
	return f, nil
}

// functionEnv is what function binaries get besides this process's
// environment: the variables of SPEC §4.
func functionEnv(o functions.Options) []string {
	p := subjects.EnvPrefix
	env := append(o.NATS.Environ(),
		p+functions.EnvPrefix+"="+o.Prefix,
		p+functions.EnvAuth+"="+string(o.Auth),
		p+functions.EnvAuthTimeout+"="+o.AuthTimeout.String(),
	)
	if o.MaxMessageSize > 0 {
		env = append(env, fmt.Sprintf("%s%s=%d", p, functions.EnvMaxMessageSize, o.MaxMessageSize))
	}
	return env
}

// Apply sets the invokers and the readiness check of o.
func (f *Functions) Apply(o *Options) {
	o.Register, o.Transfer, o.Cleanup = f.Register, f.Transfer, f.Cleanup
	o.Ready = f.Ready
}

// Ready pings the function binaries; in-process handlers are always ready.
func (f *Functions) Ready(ctx context.Context) error {
	for _, r := range f.rpcs {
		if err := r.Ping(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the binaries and the in-process handlers.
func (f *Functions) Close() error {
	var errs []error
	if f.inproc != nil {
		f.inproc.Close()
	}
	for _, r := range f.rpcs {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}
