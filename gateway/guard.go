package gateway

import (
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// refuse answers an upgrade the gateway itself turns down (a limit, the
// Origin list, shutting down).
func (g *Gateway) refuse(w http.ResponseWriter, status int, msg string) {
	g.stats.rejected.Add(1)
	g.m.connects.WithLabelValues(connectRefused).Inc()
	writeReply(w, status, status, msg)
}

// originAllowed reports whether an upgrade's Origin is on the list (any
// Origin when the list is empty).
func (g *Gateway) originAllowed(origin string) bool {
	if len(g.opts.AllowedOrigins) == 0 {
		return true
	}
	for _, o := range g.opts.AllowedOrigins {
		if strings.EqualFold(strings.TrimSuffix(o, "/"), origin) {
			return true
		}
	}
	return false
}

// clipHeader shortens a client's header value for a log line.
func clipHeader(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}

// clientIP is the peer's address, or, when the peer is a trusted proxy,
// the right-most address of X-Forwarded-For that is not a trusted proxy
// (the left-most when all are): what the nearest untrusted hop said.
func (g *Gateway) clientIP(r *http.Request) string {
	peer := sourceIP(r)
	if len(g.opts.TrustedProxies) == 0 || !g.trusted(peer) {
		return peer
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hops = append(hops, h)
			}
		}
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(hops[i])
		if err != nil {
			// A hop that is not an address: nothing left of it can be
			// believed either.
			return peer
		}
		if i == 0 || !g.trustedAddr(a) {
			return a.Unmap().String()
		}
	}
	return peer
}

func (g *Gateway) trusted(ip string) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && g.trustedAddr(a)
}

func (g *Gateway) trustedAddr(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range g.opts.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParseTrustedProxies parses a comma list of IPs and CIDRs.
func ParseTrustedProxies(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if strings.Contains(f, "/") {
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, err
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, err
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// takeIP counts one more connection of ip, unless that passes
// MaxConnectionsPerIP.
func (g *Gateway) takeIP(ip string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opts.MaxConnectionsPerIP > 0 && g.perIP[ip] >= g.opts.MaxConnectionsPerIP {
		return false
	}
	g.perIP[ip]++
	return true
}

func (g *Gateway) releaseIP(ip string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.perIP[ip] - 1; n > 0 {
		g.perIP[ip] = n
	} else {
		delete(g.perIP, ip)
	}
}

// newConnID returns a fresh secConnectionID: one naming this instance when
// the gateway is an edge instance, else shaped like Tencent's.
func (g *Gateway) newConnID() string {
	if g.edge != nil {
		return subjects.NewEdgeConnID(g.opts.InstanceID)
	}
	return newConnID()
}

// tickEvery is how often the janitor looks at idle and quiet connections.
func (g *Gateway) tickEvery() time.Duration {
	d := g.opts.IdleTimeout
	if g.opts.PingInterval > 0 {
		d = min(d, g.opts.PingInterval)
	}
	return min(max(d/4, 10*time.Millisecond), 500*time.Millisecond)
}
