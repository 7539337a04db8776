package main

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// faults starts each planned fault at its time; they overlap as the plan
// has them. When ctx ends (the fault phase is over) every fault in
// progress ends at once: what it stopped is started again.
func (r *Runner) faults(ctx context.Context, phase time.Time) {
	var wg sync.WaitGroup
	for _, f := range r.plan.Faults {
		if d := time.Until(phase.Add(f.At)); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			r.faultRec(f, "skip", "the fault phase ended first")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.runFault(ctx, f)
		}()
	}
	wg.Wait()
}

func (r *Runner) faultRec(f Fault, phase, detail string) {
	r.hist.add(FaultRec{T: "fault", N: f.N, Kind: f.Kind, Target: f.targetName(), Phase: phase, At: time.Now(), Detail: detail})
	if phase != "end" || r.cfg.Verbose {
		msg := fmt.Sprintf("fault %s: %s", phase, f)
		if detail != "" {
			msg += ": " + detail
		}
		r.logf("%s", msg)
	}
}

// hold lasts the fault's duration, or less when the fault phase ends.
func hold(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// stopProc signals p and waits for it to exit; a process that outlives
// its SIGTERM by 30 s is killed, and the history says so.
func (r *Runner) stopProc(p *proc, sig syscall.Signal) (string, error) {
	done, err := p.signal(sig)
	if err != nil {
		return "", err
	}
	start := time.Now()
	select {
	case <-done:
		return fmt.Sprintf("exited %v after %s", time.Since(start).Round(time.Millisecond), sig), nil
	case <-time.After(30 * time.Second):
		_, _ = p.signal(syscall.SIGKILL)
		<-done
		return fmt.Sprintf("still running 30s after %s: killed", sig), nil
	}
}

func (r *Runner) runFault(ctx context.Context, f Fault) {
	skip := func(why string) { r.faultRec(f, "skip", why) }
	restart := func(p *proc, detail string) {
		if err := p.start(); err != nil {
			detail += "; restart: " + err.Error()
		}
		r.faultRec(f, "end", detail)
	}
	switch f.Kind {
	case FaultBridgeKill, FaultBridgeTerm:
		p := r.bridges[f.Target].proc
		if !p.isReady() {
			skip("not ready")
			return
		}
		sig := syscall.SIGKILL
		if f.Kind == FaultBridgeTerm {
			sig = syscall.SIGTERM
		}
		r.faultRec(f, "start", "")
		detail, err := r.stopProc(p, sig)
		if err != nil {
			r.faultRec(f, "end", err.Error())
			return
		}
		hold(ctx, f.Dur)
		restart(p, detail)

	case FaultBridgeCut:
		b := r.bridges[f.Target]
		r.faultRec(f, "start", "")
		for _, px := range b.proxies {
			px.cut(f.Mode)
		}
		hold(ctx, f.Dur)
		for _, px := range b.proxies {
			px.heal()
		}
		r.faultRec(f, "end", "")

	case FaultNATSKill:
		// Never two at once: every node must be up and current first.
		deadline := time.Now().Add(15 * time.Second)
		for !r.nodesHealthy() {
			if time.Now().After(deadline) || ctx.Err() != nil {
				skip("another node is not healthy")
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		p := r.nodes[f.Target].proc
		r.faultRec(f, "start", "")
		detail, err := r.stopProc(p, syscall.SIGKILL)
		if err != nil {
			r.faultRec(f, "end", err.Error())
			return
		}
		hold(ctx, f.Dur)
		restart(p, detail)

	case FaultPush503:
		px := r.edges[f.Target].proxy
		r.faultRec(f, "start", "")
		px.set503(f.Frac)
		hold(ctx, f.Dur)
		px.set503(0)
		r.faultRec(f, "end", "")

	case FaultPushSlow:
		px := r.edges[f.Target].proxy
		r.faultRec(f, "start", "")
		px.setDelay(f.Delay)
		hold(ctx, f.Dur)
		px.setDelay(0)
		r.faultRec(f, "end", "")

	case FaultEdgeKill, FaultEdgeTerm:
		e := r.edges[f.Target]
		if !e.proc.isReady() {
			skip("not ready")
			return
		}
		for i, o := range r.edges {
			if i != f.Target && !o.proc.isReady() {
				skip(o.proc.name + " is not ready: its clients would have nowhere to go")
				return
			}
		}
		sig := syscall.SIGKILL
		if f.Kind == FaultEdgeTerm {
			sig = syscall.SIGTERM
		}
		// Mark first, so a connection that opens meanwhile is marked too.
		e.setGoing(f.Kind)
		n := 0
		for _, c := range r.clients {
			if w := c.current(); w != nil && w.rec.Edge == f.Target && w.addCause(f.Kind) {
				n++
			}
		}
		r.faultRec(f, "start", fmt.Sprintf("%d connections", n))
		detail, err := r.stopProc(e.proc, sig)
		if err != nil {
			e.setGoing("")
			r.faultRec(f, "end", err.Error())
			return
		}
		hold(ctx, f.Dur)
		e.setGoing("")
		restart(e.proc, detail)

	case FaultStall:
		c := r.clients[f.Target]
		w := c.stall()
		if w == nil {
			skip("no open connection, or already stalled")
			return
		}
		n := r.cfg.StallBytes / bulkMessageBytes
		r.faultRec(f, "start", fmt.Sprintf("%d messages of %d bytes pushed at it", n, bulkMessageBytes))
		for k := 0; k < n; k++ {
			r.pub.enqueue(PubRec{ID: fmt.Sprintf("b%d.%d", f.N, k), Kind: KindBulk, Client: f.Target, Token: w.rec.Token})
		}
		hold(ctx, f.Dur)
		c.resume()
		r.faultRec(f, "end", "")
	}
}

func (r *Runner) nodesHealthy() bool {
	for _, n := range r.nodes {
		if !n.proc.running() || !httpOK(n.proc.healthy) {
			return false
		}
	}
	return true
}

// setGoing marks the edge as being stopped by a fault (kind), or no longer.
func (e *edgeProc) setGoing(kind string) {
	e.mu.Lock()
	e.going = kind
	e.mu.Unlock()
}

func (e *edgeProc) goingKind() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.going
}
