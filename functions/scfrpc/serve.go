package scfrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/rpc"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tencentyun/scf-go-lib/cloudfunction"
	"github.com/tencentyun/scf-go-lib/cloudfunction/messages"
	"github.com/tencentyun/scf-go-lib/functioncontext"
)

// EnvListenerFD names the variable by which a parent hands a function
// process the listener it must serve on (a descriptor number, see
// Handover). SCF never sets it.
const EnvListenerFD = "WSBRIDGE_RPC_LISTENER_FD"

// Handler is the shape of wsbridge's function handlers (and of
// scf-go-lib's cloudfunction.Start handlers that take and return JSON).
type Handler func(ctx context.Context, payload json.RawMessage) (json.RawMessage, error)

// Start serves h as an SCF Go function and never returns.
//
// Under SCF it is scf-go-lib's cloudfunction.Start, unchanged: the runtime
// sets $_LAMBDA_SERVER_PORT and the library listens on it. Started by
// `wsbridge gateway --functions` (or a test) through a Handover, the
// process serves on the loopback listener the parent opened and handed
// over: the function's unauthenticated net/rpc port is never on the
// network, and no port is chosen in one process and bound in another
// (where a third process can take it in between).
func Start(h Handler) {
	ln, err := handedListener()
	if err != nil {
		log.Fatal(err)
	}
	if ln == nil {
		cloudfunction.Start(func(ctx context.Context, payload json.RawMessage) (json.RawMessage, error) {
			return h(ctx, payload)
		})
		return
	}
	log.Fatal(Serve(ln, h))
}

// handedListener is the listener a parent handed over, nil when none was
// (under SCF). The variable is removed, so a process this one starts does
// not take the descriptor number for its own.
func handedListener() (net.Listener, error) {
	v, ok := os.LookupEnv(EnvListenerFD)
	if !ok {
		return nil, nil
	}
	_ = os.Unsetenv(EnvListenerFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("scfrpc: %s=%q: want the descriptor number of a listener (3 or more)", EnvListenerFD, v)
	}
	f := os.NewFile(uintptr(fd), "rpc-listener")
	ln, err := net.FileListener(f)
	f.Close() // FileListener holds its own descriptor
	if err != nil {
		return nil, fmt.Errorf("scfrpc: %s=%d: not a listener: %w", EnvListenerFD, fd, err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("scfrpc: %s=%d listens on %s: a function's net/rpc port must be on loopback", EnvListenerFD, fd, ln.Addr())
	}
	return ln, nil
}

// Serve answers the SCF runtime's net/rpc calls (Function.Ping,
// Function.Invoke) on ln, as scf-go-lib's runtime does, until ln fails.
func Serve(ln net.Listener, h Handler) error {
	srv := rpc.NewServer()
	if err := srv.RegisterName("Function", &function{h: h}); err != nil {
		return fmt.Errorf("scfrpc: %w", err)
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("scfrpc: accept on %s: %w", ln.Addr(), err)
		}
		go srv.ServeConn(conn)
	}
}

// function is the net/rpc service "Function" of scf-go-lib's runtime
// (cloudfunction.Function), with the same answers: tests compare the two
// (TestServeMatchesLibrary).
type function struct{ h Handler }

// Ping answers the runtime's liveness check.
func (fn *function) Ping(_ *messages.PingRequest, resp *messages.PingResponse) error {
	*resp = messages.PingResponse{}
	return nil
}

// Invoke runs one invocation: the deadline, function context, client
// context and environment of req, the payload decoded and the answer
// encoded as JSON; a returned error or a panic is the response's Error.
func (fn *function) Invoke(req *messages.InvokeRequest, resp *messages.InvokeResponse) error {
	defer func() {
		if v := recover(); v != nil {
			resp.Error = &messages.InvokeResponse_Error{
				Message:    fmt.Sprintf("%v", v),
				Type:       typeName(v),
				StackTrace: panicStack(),
				ShouldExit: true,
			}
		}
	}()
	deadline := time.Unix(req.Deadline.Seconds, req.Deadline.Nanos).UTC()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	fc := &functioncontext.FunctionContext{
		RequestID:             req.RequestId,
		InvokedFunctionUnique: req.InvokedFunctionUnique,
		Namespace:             req.Namespace,
		FunctionName:          req.FunctionName,
		FunctionVersion:       req.FunctionVersion,
		MemoryLimitInMb:       req.MemoryLimitInMb,
		TimeLimitInMs:         req.TimeLimitInMs,
		TencentcloudRegion:    req.TencentcloudRegion,
		TencentcloudAppID:     req.TencentcloudAppID,
		TencentcloudUin:       req.TencentcloudUin,
		FunctionTrace:         req.FunctionTrace,
	}
	if len(req.ClientContext) > 0 {
		if err := json.Unmarshal(req.ClientContext, &fc.ClientContext); err != nil {
			resp.Error = errorResponse(err)
			return nil
		}
	}
	if len(req.Environment) > 0 {
		if err := json.Unmarshal([]byte(req.Environment), &fc.Environment); err != nil {
			resp.Error = errorResponse(err)
			return nil
		}
		for k, v := range fc.Environment {
			os.Setenv(k, v)
		}
	}
	ctx = functioncontext.NewContext(ctx, fc)
	var event json.RawMessage
	if err := json.Unmarshal(req.Payload, &event); err != nil {
		resp.Error = errorResponse(err)
		return nil
	}
	out, err := fn.h(ctx, event)
	if err == nil {
		// The library encodes whatever the handler returned.
		var b []byte
		if b, err = json.Marshal(out); err == nil {
			resp.Payload = b
			return nil
		}
	}
	resp.Error = errorResponse(err)
	return nil
}

// errorResponse is a returned error as the runtime reports it: its message
// and the name of its type.
func errorResponse(err error) *messages.InvokeResponse_Error {
	return &messages.InvokeResponse_Error{Message: err.Error(), Type: typeName(err)}
}

// typeName is the name of v's type, or of the type it points to.
func typeName(v any) string {
	t := reflect.TypeOf(v)
	if t == nil {
		return ""
	}
	if t.Kind() == reflect.Pointer {
		return t.Elem().Name()
	}
	return t.Name()
}

// panicStack is the stack of a recovered panic, from the panicking call
// up, in the runtime's frame format (path from the package's import path,
// label without the package).
func panicStack() []*messages.InvokeResponse_Error_StackFrame {
	pcs := make([]uintptr, 32)
	// runtime.Callers, panicStack, the deferred function.
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	var out []*messages.InvokeResponse_Error_StackFrame
	for {
		f, more := frames.Next()
		path, label := f.File, f.Function
		i := len(path)
		for n, g := 0, strings.Count(label, "/")+2; n < g && i >= 0; n++ {
			i = strings.LastIndex(path[:i], "/")
		}
		path = path[i+1:]
		label = label[strings.LastIndex(label, "/")+1:]
		label = label[strings.Index(label, ".")+1:]
		out = append(out, &messages.InvokeResponse_Error_StackFrame{Path: path, Line: int32(f.Line), Label: label})
		if !more {
			break
		}
	}
	return out
}

// Handover is a loopback listener opened by a parent for a function process
// it starts: the process serves on it (Start) instead of listening itself.
// Use: NewHandover, Attach to the command, start the command, Close.
type Handover struct {
	ln *net.TCPListener
	f  *os.File
}

// NewHandover opens a listener on 127.0.0.1, on a port the kernel picks.
func NewHandover() (*Handover, error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("scfrpc: listen for a function: %w", err)
	}
	f, err := ln.File()
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("scfrpc: listener of a function: %w", err)
	}
	return &Handover{ln: ln, f: f}, nil
}

// Addr is the address the function will answer on (host:port).
func (h *Handover) Addr() string { return h.ln.Addr().String() }

// Attach gives cmd the listener (an extra descriptor) and the environment
// that names it, after cmd.Env (nil: this process's environment). It also
// sets $_LAMBDA_SERVER_PORT to the listener's port: a binary serving with
// scf-go-lib alone then fails to listen (the port is taken by the listener
// it was handed) rather than open a port on every interface.
func (h *Handover) Attach(cmd *exec.Cmd) {
	fd := 3 + len(cmd.ExtraFiles)
	cmd.ExtraFiles = append(cmd.ExtraFiles, h.f)
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env,
		EnvListenerFD+"="+strconv.Itoa(fd),
		"_LAMBDA_SERVER_PORT="+strconv.Itoa(h.ln.Addr().(*net.TCPAddr).Port))
}

// Close closes this process's copies of the listener; a started child keeps
// its own. Call it once the command has started (or failed to).
func (h *Handover) Close() error {
	return errors.Join(h.f.Close(), h.ln.Close())
}
