package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// proc is one supervised process of the run: a NATS node, a bridge or an
// edge. Its output goes to a log file in the run directory (every start
// appends, under a header line). An exit nobody asked for is recorded and
// the process started again a second later, as a supervisor would; one that
// happens after the process had been ready is a crash, and the checker
// reports it.
type proc struct {
	r       *Runner
	name    string
	bin     string
	args    []string
	log     string
	readyAt string // URL answering 200 once the process is ready
	healthy string // URL of /healthz

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current process exited
	intended bool          // the current process was asked to stop
	ready    bool          // the current process answered readyAt
	stopping bool          // the run is ending: no more restarts
	starts   int
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.name)
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(f, "=== %s start %d at %s: %s %v\n", p.name, p.starts, time.Now().Format(time.RFC3339Nano), filepath.Base(p.bin), p.args)
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.done, p.intended, p.ready = cmd, make(chan struct{}), false, false
	p.r.hist.add(ProcRec{T: "proc", Name: p.name, Event: "start", At: time.Now(), Pid: cmd.Process.Pid})
	done := p.done
	go p.watchReady(cmd, done)
	go func() {
		err := cmd.Wait()
		f.Close()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = -int(ws.Signal())
			}
		}
		p.mu.Lock()
		intended, ready, stopping := p.intended, p.ready, p.stopping
		p.cmd = nil
		close(done)
		p.mu.Unlock()
		p.r.hist.add(ProcRec{T: "proc", Name: p.name, Event: "exit", At: time.Now(), Pid: cmd.Process.Pid,
			Code: code, Intended: intended || stopping, Ready: ready, Log: p.log})
		if !intended && !stopping {
			p.r.logf("%s exited (code %d) without being asked to%s; restarting it (log %s)", p.name, code,
				map[bool]string{true: " after it was ready", false: " before it was ready"}[ready], p.log)
			time.Sleep(time.Second)
			p.mu.Lock()
			again := !p.stopping && p.cmd == nil
			p.mu.Unlock()
			if again {
				if err := p.start(); err != nil {
					p.r.logf("restart %s: %v", p.name, err)
				}
			}
		}
	}()
	return nil
}

// watchReady marks the process ready once readyAt answers 200.
func (p *proc) watchReady(cmd *exec.Cmd, done chan struct{}) {
	if p.readyAt == "" {
		return
	}
	for {
		select {
		case <-done:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if httpOK(p.readyAt) {
			p.mu.Lock()
			if p.cmd == cmd {
				p.ready = true
			}
			p.mu.Unlock()
			return
		}
	}
}

// signal sends sig to the running process, as something the run asked for.
func (p *proc) signal(sig syscall.Signal) (done chan struct{}, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil, fmt.Errorf("%s is not running", p.name)
	}
	p.intended = true
	p.r.hist.add(ProcRec{T: "proc", Name: p.name, Event: "signal", At: time.Now(), Pid: p.cmd.Process.Pid, Detail: sig.String()})
	return p.done, p.cmd.Process.Signal(sig)
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

func (p *proc) isReady() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && p.ready
}

// waitReady waits until the process is ready, or gives up after limit.
func (p *proc) waitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for !p.isReady() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %v (log %s)", p.name, limit, p.log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// stop ends the process for good: SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	p.mu.Lock()
	p.stopping = true
	cmd, done := p.cmd, p.done
	if cmd != nil {
		p.intended = true
	}
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// cleanEnv is the runner's environment without WSBRIDGE_ variables, which
// would change the flags the processes get.
func cleanEnv() []string {
	var out []string
	for _, e := range os.Environ() {
		if len(e) >= 9 && e[:9] == "WSBRIDGE_" {
			continue
		}
		out = append(out, e)
	}
	return out
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func httpOK(url string) bool {
	resp, err := httpClient.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freePorts picks n distinct loopback ports for the processes, free when
// picked, below the kernel's ephemeral range: a process restarted after a
// kill binds its port again, and a port of the ephemeral range may by then
// be the local end of some outgoing connection (or a listener on :0, like
// the runner's own proxies).
func freePorts(n int) ([]int, error) {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if _, err := fmt.Sscan(string(b), &a, &z); err == nil && a > 12000 {
			lo = a
		}
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	var out []int
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("no free port below %d after 1000 tries", lo)
		}
		p := 10000 + rand.IntN(lo-10000)
		if portsTaken[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		portsTaken[p] = true
		out = append(out, p)
	}
	return out, nil
}

var (
	portsMu    sync.Mutex
	portsTaken = map[int]bool{}
)

// buildBinaries builds wsbridge and nats-server (from the module this one
// requires) into dir, without the race detector: they are the binaries
// deployed.
func buildBinaries(dir string) (wsbridge, natsServer string, err error) {
	for _, pkg := range []string{modulePath, "github.com/nats-io/nats-server/v2"} {
		cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), pkg)
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	}
	return filepath.Join(dir, "wsbridge"), filepath.Join(dir, "nats-server"), nil
}

const modulePath = "github.com/wsbridge/wsbridge"

// moduleRoot is the directory of the module this runner was built from
// (its source sits in test/chaos), so the binaries built are of the same
// tree whatever the working directory; failing that, the working
// directory's module.
func moduleRoot() string {
	if _, file, _, ok := runtime.Caller(0); ok {
		root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			return root
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if mod := string(out); len(mod) > 1 {
			return filepath.Dir(mod[:len(mod)-1])
		}
	}
	return "."
}
