package gateway

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"
)

// clientJSPath is where every instance serves clientJS, on the client
// listener: the path pages load it from (gateway/README.md).
const clientJSPath = "/wsbridge.js"

// clientJS is the JavaScript client of resumable sessions (browsers and
// Node), served at /wsbridge.js so a page loads the one that speaks its
// gateway's protocol.
//
//go:embed wsbridge.js
var clientJS []byte

// clientJSETag names this build's wsbridge.js: a page revalidates it on
// every load (no-cache) and gets a 304 while the file is unchanged, and the
// new file at once after a deploy.
var clientJSETag = func() string {
	sum := sha256.Sum256(clientJS)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}()

// serveClientJS serves wsbridge.js for GET and HEAD.
func (g *Gateway) serveClientJS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("ETag", clientJSETag)
	// ServeContent answers If-None-Match with 304, HEAD without a body and
	// Range requests; no modification time, so only the ETag decides.
	http.ServeContent(w, r, "wsbridge.js", time.Time{}, bytes.NewReader(clientJS))
}
