package demo

import (
	_ "embed"
	"net/http"
)

//go:embed index.html
var indexHTML []byte

// Page serves the chat page at / (and /index.html). It is one embedded file
// with no external assets; its script connects to ws://<same host>/ws, so
// serve it from the emulator's Fallback. Elements with ids status, token,
// copy, reconnect, natscmds, input, send and log, and the log's classes
// (system, echo, chat, nats, binary), are stable for browser tests.
func Page() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && r.URL.Path != "/index.html" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(indexHTML)
	})
}
