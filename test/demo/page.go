package demo

import (
	_ "embed"
	"net/http"
)

//go:embed index.html
var indexHTML []byte

// Page serves the chat page at / (and /index.html). It is one embedded file
// whose only other asset is the client library the gateway serves
// (/wsbridge.js); its script opens a resumable session at
// ws://<same host>/ws, so serve it from the gateway's Fallback. Elements
// with ids status, token, copy, reconnect, drop, natscmds, input, send and
// log, and the log's classes (system, echo, chat, nats, binary, resumed,
// reset), are stable for browser tests.
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
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'")
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(indexHTML)
	})
}
