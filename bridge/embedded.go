package bridge

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure an in-process NATS server with JetStream.
type EmbeddedOptions struct {
	Host     string // listen host ("127.0.0.1")
	Port     int    // listen port; -1 picks a free one, 0 means 4222
	StoreDir string // JetStream storage directory (required)
}

// StartEmbeddedNATS starts a NATS server with JetStream in this process, for
// the bridge without NATS_URL and for the dev command. The caller shuts it
// down with Shutdown (and WaitForShutdown).
func StartEmbeddedNATS(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("embedded nats: a store directory is required (DATA_DIR)")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	s, err := server.NewServer(&server.Options{
		ServerName: "wsbridge-embedded",
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true, // the process owns SIGINT/SIGTERM
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready to accept connections on %s:%d within 10s", o.Host, o.Port)
	}
	return s, nil
}
