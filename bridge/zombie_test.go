package bridge

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// cutProxy forwards TCP connections to a NATS server until it is cut: then
// it keeps them open but forwards nothing, as a network partition does
// (the bridge behind it notices only by timeouts). Healing closes the cut
// connections, so the client reconnects through the proxy.
type cutProxy struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { _ = ln.Close(); p.closeAll() })
	return p
}

func (p *cutProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.cut.Load() {
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// pipe copies src to dst, dropping the bytes while the proxy is cut.
func (p *cutProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.cut.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				_ = dst.Close()
			}
			return
		}
	}
}

func (p *cutProxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// heal lets traffic through again; the cut connections are closed (their
// streams lost bytes), so clients reconnect.
func (p *cutProxy) heal() {
	p.closeAll()
	p.cut.Store(false)
}

// TestZombieIsFenced cuts one of three bridges off from NATS while it still
// reaches the push target: it stops pushing within its lease, the others
// take its partitions over, a connection goes back only to repeat in order
// what the zombie pushed after its last commit, and the cut bridge rejoins
// and takes work again once the cut heals.
func TestZombieIsFenced(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out leases")
	}
	e := newEnv(t, nil)
	mt := newMultiTarget(t, 3*time.Millisecond)
	proxy := newCutProxy(t, e.s.Addr().String())
	const conns = 40
	// The zombie's drops are the cut's (one window); the others' are
	// renewals that missed their fence on a loaded machine.
	var drops, zombieDrops atomic.Int64
	start := func(name string, nc *nats.Conn) *Bridge {
		n := &drops
		if name == "z" {
			n = &zombieDrops
		}
		return startBridge(t, Options{PushURL: mt.srv.URL + "/" + name + "/api", Concurrency: 16}, Deps{Conn: nc, Logger: countingLogger(t, n).With("bridge", name)})
	}
	znc, err := nats.Connect(proxy.url(), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond), nats.Timeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(znc.Close)
	zombie := start("z", znc)
	a := start("a", connect(t, e.s))
	b := start("b", connect(t, e.s))
	waitFor(t, "the zombie-to-be to own partitions", 30*time.Second, func() bool { return len(zombie.Owned()) > 0 })

	pc := &pacer{e: e, conns: conns, every: 50 * time.Millisecond}
	pace := pc.pace
	pace(20)
	owned := zombie.Owned()
	cutAt := time.Now()
	proxy.cut.Store(true)
	pace(60)
	waitFor(t, "the zombie to give up its partitions", 30*time.Second, func() bool { return len(zombie.Owned()) == 0 })
	waitFor(t, "the cut-off bridge to report not ready", 30*time.Second, func() bool { return zombie.Ready() != nil })
	t.Logf("cut-off bridge: not ready: %v", zombie.Ready())
	lastZ := time.Time{}
	for _, p := range mt.all() {
		if p.bridge == "z" && p.at.After(lastZ) {
			lastZ = p.at
		}
	}
	fence := time.Duration(zombie.opts.LeaseTTL) * 3 / 4
	t.Logf("zombie owned %d partitions; its last push %v after the cut (fence %v)", len(owned), lastZ.Sub(cutAt).Round(time.Millisecond), fence)
	if lastZ.Sub(cutAt) > fence+time.Second {
		t.Errorf("zombie pushed %v after it was cut off, past its fence of %v", lastZ.Sub(cutAt), fence)
	}
	// The others take the partitions over (after a lease) while it is
	// still cut off.
	waitFor(t, "the others to push for every partition the zombie had", 60*time.Second, func() bool {
		pc.pace(pc.round + 1)
		pushes := mt.all()
		took := 0
		for _, o := range [][]int{a.Owned(), b.Owned()} {
			took += len(o)
		}
		return took == subjects.DefaultPartitions && allResumed(pushes, "z", cutAt, subjects.DefaultPartitions)
	})
	taken, n := resumed(mt.all(), "z", cutAt, subjects.DefaultPartitions)
	t.Logf("the zombie's %d partitions resumed on the others %v after the cut", n, taken.Round(time.Millisecond))
	healAt := time.Now()
	proxy.heal()
	per := pc.round + 40
	pace(per)
	waitFor(t, "the healed bridge to take work again", 60*time.Second, func() bool { return len(zombie.Owned()) > 0 })
	t.Logf("rejoined %v after the heal, owning %v", time.Since(healAt).Round(time.Millisecond), zombie.Owned())
	waitFor(t, "every message pushed", 120*time.Second, func() bool { return mt.distinct() >= conns*per })
	waitFor(t, "every command resolved", 30*time.Second, e.resolved)
	// One window for the cut, one for each partition dropped otherwise.
	dups := checkOrder(t, mt.all(), conns, per, 1+int(drops.Load()))
	t.Logf("%d repeats; partitions dropped by the others: %d, by the zombie: %d", dups, drops.Load(), zombieDrops.Load())
}
