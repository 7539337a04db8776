package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/wsbridge/wsbridge/functions/scfrpc"
)

// ErrFunctionExited reports an invocation of a function process that is no
// longer running.
var ErrFunctionExited = errors.New("function process exited")

const (
	// readyTimeout bounds the wait for a function's RPC port when the
	// caller's context has no deadline.
	readyTimeout = 10 * time.Second
	// readyInterval is the first pause between pings of a starting function.
	readyInterval = 10 * time.Millisecond
	// killTimeout bounds the wait for a killed function process to exit.
	killTimeout = 5 * time.Second
)

// RPCInvoker invokes a function over the SCF Go runtime's protocol (an
// scfrpc.Client: net/rpc Function.Invoke, exactly as SCF calls a Go
// function) and, for StartBinary, owns the function's process: an
// invocation of a process that has exited says so (ErrFunctionExited), and
// Close kills it. It is safe for concurrent use.
type RPCInvoker struct {
	*scfrpc.Client
	name string

	cmd     *exec.Cmd // nil when dialed
	exited  chan struct{}
	exitErr error

	closeOnce sync.Once
}

// DialRPC connects to a function already serving on addr (host:port),
// waiting until it answers Function.Ping or ctx ends (at most 10s when ctx
// has no deadline).
func DialRPC(ctx context.Context, addr string) (*RPCInvoker, error) {
	ctx, cancel := withReadyTimeout(ctx)
	defer cancel()
	c, err := scfrpc.WaitReady(ctx, addr, readyInterval)
	if err != nil {
		return nil, err
	}
	return &RPCInvoker{Client: c, name: "function"}, nil
}

func withReadyTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, readyTimeout)
}

// StartBinary starts a function binary the way SCF does and waits until it
// answers Function.Ping (ctx bounds only this wait; at most 10s when ctx
// has no deadline). The binary serves on a loopback listener opened here
// and handed to it (scfrpc.Handover; the function binaries serve with
// scfrpc.Start): its unauthenticated net/rpc port is never reachable from
// the network, and no other process can take the port between its choice
// and its use. env is added to the current environment. The process's
// output goes to this process's stderr. Close kills the process.
func StartBinary(ctx context.Context, path string, env []string) (*RPCInvoker, error) {
	h, err := scfrpc.NewHandover()
	if err != nil {
		return nil, fmt.Errorf("start function %s: %w", path, err)
	}
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	h.Attach(cmd)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = time.Second
	dieWithParent(cmd)
	err = cmd.Start()
	h.Close() // the child holds its own copy: a child that dies closes it
	if err != nil {
		return nil, fmt.Errorf("start function %s: %w", path, err)
	}
	r := &RPCInvoker{name: filepath.Base(path), cmd: cmd, exited: make(chan struct{})}
	go func() {
		r.exitErr = cmd.Wait()
		close(r.exited)
	}()
	// The wait for Ping ends as soon as the process does.
	ctx, cancel := withReadyTimeout(ctx)
	defer cancel()
	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	go func() {
		select {
		case <-r.exited:
			stop(r.processExited())
		case <-wctx.Done():
		}
	}()
	r.Client, err = scfrpc.WaitReady(wctx, h.Addr(), readyInterval, scfrpc.Name(r.name))
	if err != nil {
		_ = r.Close()
		if errors.Is(err, ErrFunctionExited) {
			err = fmt.Errorf("%w (a function binary run here serves on the listener it is handed: build it with scfrpc.Start, as functions/* are)", err)
		}
		return nil, fmt.Errorf("start function %s: %w", path, err)
	}
	return r, nil
}

// processExited reports the process's end, if it has ended.
func (r *RPCInvoker) processExited() error {
	if r.exited == nil {
		return nil
	}
	select {
	case <-r.exited:
		return fmt.Errorf("%w: %v", ErrFunctionExited, r.exitErr)
	default:
		return nil
	}
}

// Ping checks that the function answers Function.Ping.
func (r *RPCInvoker) Ping(ctx context.Context) error {
	return r.exitedOr(r.Client.Ping(ctx))
}

// Invoke sends one invocation (see scfrpc.Client.Invoke); the gateway's
// context carries the request id, function name and deadline.
func (r *RPCInvoker) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	out, err := r.Client.Invoke(ctx, payload)
	return out, r.exitedOr(err)
}

// exitedOr is err, or ErrFunctionExited when the failure is the process's end.
func (r *RPCInvoker) exitedOr(err error) error {
	if err == nil {
		return nil
	}
	var fe *scfrpc.FunctionError
	if errors.As(err, &fe) {
		return err
	}
	if perr := r.processExited(); perr != nil {
		return fmt.Errorf("function %s: %w", r.name, perr)
	}
	return err
}

// Close closes the connection and kills the process StartBinary started.
// It is idempotent.
func (r *RPCInvoker) Close() error {
	var err error
	r.closeOnce.Do(func() {
		if r.Client != nil {
			_ = r.Client.Close()
		}
		if r.cmd == nil {
			return
		}
		if kerr := r.cmd.Process.Kill(); kerr != nil && !errors.Is(kerr, os.ErrProcessDone) {
			err = fmt.Errorf("kill function %s: %w", r.name, kerr)
		}
		select {
		case <-r.exited:
		case <-time.After(killTimeout):
			err = errors.Join(err, fmt.Errorf("function %s did not exit after kill", r.name))
		}
	})
	return err
}
