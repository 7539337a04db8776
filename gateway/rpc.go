package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// StartBinary starts a function binary the way SCF does, with
// _LAMBDA_SERVER_PORT set to a free port, and waits until it answers
// Function.Ping (ctx bounds only this wait; at most 10s when ctx has no
// deadline). env is added to the current environment. The process's output
// goes to this process's stderr. Close kills the process.
//
// The port is free when it is chosen, and another socket of the machine may
// take it before the function binds it: a function that exits saying its
// port is in use is started again on another, up to startAttempts times.
func StartBinary(ctx context.Context, path string, env []string) (*RPCInvoker, error) {
	for attempt := 1; ; attempt++ {
		r, portTaken, err := startBinary(ctx, path, env)
		if err == nil || !portTaken || attempt == startAttempts || ctx.Err() != nil {
			return r, err
		}
	}
}

// startAttempts bounds the starts of a function binary whose port was taken
// before it bound it.
const startAttempts = 3

// startBinary is one start of StartBinary; portTaken reports a process that
// exited because its port was in use.
func startBinary(ctx context.Context, path string, env []string) (_ *RPCInvoker, portTaken bool, _ error) {
	port, err := freePort()
	if err != nil {
		return nil, false, err
	}
	inUse := &sawWriter{want: []byte("address already in use")}
	cmd := exec.Command(path)
	cmd.Env = append(append(os.Environ(), env...), "_LAMBDA_SERVER_PORT="+strconv.Itoa(port))
	cmd.Stdout = os.Stderr
	cmd.Stderr = io.MultiWriter(os.Stderr, inUse)
	cmd.WaitDelay = time.Second
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("start function %s: %w", path, err)
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
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	r.Client, err = scfrpc.WaitReady(wctx, addr, readyInterval, scfrpc.Name(r.name))
	if err != nil {
		// Close waits for the process's end, and so for all its output.
		_ = r.Close()
		return nil, inUse.saw(), fmt.Errorf("start function %s: %w", path, err)
	}
	return r, false, nil
}

// sawWriter reports whether want went through it, even cut across writes.
type sawWriter struct {
	want []byte
	mu   sync.Mutex
	tail []byte
	seen bool
}

func (w *sawWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.seen {
		buf := append(w.tail, p...)
		w.seen = bytes.Contains(buf, w.want)
		w.tail = append(w.tail[:0], buf[max(len(buf)-len(w.want)+1, 0):]...)
	}
	return len(p), nil
}

func (w *sawWriter) saw() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

// freePort asks the kernel for a port that is free now on every address,
// as the SCF runtime binds it (":port"): one free on 127.0.0.1 may be held
// on another address (a socket from 127.0.1.12 in TIME_WAIT), which fails
// the function's bind. Another process may take it before the function
// binds it (StartBinary then starts the function again on another).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
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
