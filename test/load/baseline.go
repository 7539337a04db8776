package load

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/gateway"
	"github.com/wsbridge/wsbridge/subjects"
)

// baseline is the yardstick of the gateway's figures: a WebSocket server
// written the way coder/websocket's documentation shows, on a default
// net/http server, with a handler goroutine reading each connection and
// echoing its frames; its /push writes a pushed frame to the connection.
// No functions, no limits, no bookkeeping beyond a map of connections.
type baseline struct {
	mu    sync.Mutex
	conns map[string]*websocket.Conn
	next  atomic.Int64
	open  atomic.Int64
}

func newBaseline() *baseline { return &baseline{conns: map[string]*websocket.Conn{}} }

func (b *baseline) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(gateway.DefaultWSPath, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		id := strconv.FormatInt(b.next.Add(1), 10)
		b.mu.Lock()
		b.conns[id] = c
		b.mu.Unlock()
		b.open.Add(1)
		defer func() {
			b.mu.Lock()
			delete(b.conns, id)
			b.mu.Unlock()
			b.open.Add(-1)
			_ = c.CloseNow()
		}()
		for {
			typ, data, err := c.Read(context.Background())
			if err != nil {
				return
			}
			if err := c.Write(context.Background(), typ, data); err != nil {
				return
			}
		}
	})
	mux.HandleFunc(gateway.DefaultPushPath, func(w http.ResponseWriter, r *http.Request) {
		var body subjects.PushBody
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b.mu.Lock()
		c := b.conns[body.WebSocket.SecConnectionID]
		b.mu.Unlock()
		if c == nil {
			http.NotFound(w, r)
			return
		}
		if err := c.Write(r.Context(), websocket.MessageText, []byte(body.WebSocket.Data)); err != nil {
			http.Error(w, err.Error(), http.StatusGone)
			return
		}
		_, _ = w.Write([]byte(`{"errNo":0,"errMsg":"ok"}`))
	})
	return mux
}

func (b *baseline) ids() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	ids := make([]string, 0, len(b.conns))
	for id := range b.conns {
		ids = append(ids, id)
	}
	return ids
}

// serve serves until ctx ends.
func (b *baseline) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: b.handler()}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	b.mu.Lock()
	for _, c := range b.conns {
		_ = c.CloseNow()
	}
	b.mu.Unlock()
	return nil
}
