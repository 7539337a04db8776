package gateway

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// The client library is served on the client listener at /wsbridge.js,
// revalidated by its ETag.
func TestServeClientJS(t *testing.T) {
	e := newEnv(t, nil, nil)
	srv := e.srv
	do := func(method, ifNoneMatch string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+clientJSPath, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ifNoneMatch != "" {
			req.Header.Set("If-None-Match", ifNoneMatch)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}

	resp, body := do(http.MethodGet, "")
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, clientJS) {
		t.Fatalf("GET: status %d, %d bytes, want 200 and wsbridge.js (%d bytes)", resp.StatusCode, len(body), len(clientJS))
	}
	for k, want := range map[string]string{
		"Content-Type":           "text/javascript; charset=utf-8",
		"Cache-Control":          "no-cache",
		"X-Content-Type-Options": "nosniff",
		"ETag":                   clientJSETag,
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("GET: %s %q, want %q", k, got, want)
		}
	}

	if resp, body := do(http.MethodHead, ""); resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("ETag") != clientJSETag {
		t.Errorf("HEAD: status %d, %d bytes, ETag %q; want 200, no body, %s", resp.StatusCode, len(body), resp.Header.Get("ETag"), clientJSETag)
	}
	for _, inm := range []string{clientJSETag, "W/" + clientJSETag, `"other", ` + clientJSETag, "*"} {
		resp, body := do(http.MethodGet, inm)
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 || resp.Header.Get("ETag") != clientJSETag {
			t.Errorf("If-None-Match %s: status %d, %d bytes; want 304 with the ETag and no body", inm, resp.StatusCode, len(body))
		}
	}
	if resp, _ := do(http.MethodGet, `"other"`); resp.StatusCode != http.StatusOK {
		t.Errorf(`If-None-Match "other": status %d, want 200`, resp.StatusCode)
	}
	if resp, _ := do(http.MethodPost, ""); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: status %d, Allow %q; want 405, GET, HEAD", resp.StatusCode, resp.Header.Get("Allow"))
	}
}
