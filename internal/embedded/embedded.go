// Package embedded starts the in-process NATS server with JetStream that
// `wsbridge bridge` (without --nats-url) and `wsbridge dev` run, and
// connects to it: the one way wsbridge starts and reaches its own NATS.
package embedded

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/bridge"
)

// Options say where the server listens and stores.
type Options struct {
	// Listen is host:port; port 0 (or -1) picks a free one.
	Listen string
	// DataDir is the JetStream storage, created when missing; "" uses a
	// temporary directory removed by Close.
	DataDir string
	// Name is the client name of the connection.
	Name string
}

// NATS is a running embedded server and a connection to it.
type NATS struct {
	Server *server.Server
	Conn   *nats.Conn
	// Dir is the JetStream storage directory, absolute.
	Dir    string
	tmpDir string
}

// Start starts the server and connects to it in process. The connection
// reconnects for ever: the server only goes away with Close.
func Start(o Options) (_ *NATS, err error) {
	host, port, err := SplitHostPort(o.Listen)
	if err != nil {
		return nil, err
	}
	n := &NATS{}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if o.DataDir == "" {
		if n.tmpDir, err = os.MkdirTemp("", "wsbridge-nats-"); err != nil {
			return nil, err
		}
		n.Dir = n.tmpDir
	} else {
		if n.Dir, err = filepath.Abs(o.DataDir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(n.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
	}
	if port == 0 {
		port = -1 // EmbeddedOptions reads 0 as the default port, -1 as a free one
	}
	if n.Server, err = bridge.StartEmbeddedNATS(bridge.EmbeddedOptions{Host: host, Port: port, StoreDir: n.Dir}); err != nil {
		return nil, err
	}
	n.Conn, err = nats.Connect(n.Server.ClientURL(), nats.InProcessServer(n.Server), nats.Name(o.Name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect embedded nats: %w", err)
	}
	return n, nil
}

// URL is the server's client URL, for other processes.
func (n *NATS) URL() string { return n.Server.ClientURL() }

// Close drains the connection, shuts the server down and removes a
// temporary data directory. It is safe on a partly started NATS.
func (n *NATS) Close() error {
	var errs []error
	if n.Conn != nil {
		_ = n.Conn.Drain() // flushes what is pending; Close ends it now
		n.Conn.Close()
	}
	if n.Server != nil {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	}
	if n.tmpDir != "" {
		errs = append(errs, os.RemoveAll(n.tmpDir))
	}
	return errors.Join(errs...)
}

// SplitHostPort reads a listen address host:port, port -1 to 65535.
func SplitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("nats listen address %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < -1 || p > 65535 {
		return "", 0, fmt.Errorf("nats listen address %q: bad port", addr)
	}
	return strings.TrimSpace(host), p, nil
}
