package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func h1Pusher(t *testing.T, pushURL, token string, timeout time.Duration) (*pusher, *url.URL) {
	t.Helper()
	p, err := newPusher(withoutRedirects(newHTTPClient(4, timeout)), pushURL, token)
	if err != nil {
		t.Fatal(err)
	}
	p.h1 = newH1(4, timeout)
	return p, p.url
}

// The pusher's own client sends what net/http would (method, path and
// query, headers, the body in two parts) and keeps one connection for
// pushes one after another.
func TestH1PostsAndKeepsTheConnection(t *testing.T) {
	var conns atomic.Int64
	type got struct{ method, uri, ctype, auth, seq, body string }
	var mu sync.Mutex
	var seen []got
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, got{r.Method, r.RequestURI, r.Header.Get("Content-Type"), r.Header.Get("Authorization"), r.Header.Get("Ws-Seq"), string(b)})
		mu.Unlock()
		_, _ = w.Write(okAnswer)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	p, u := h1Pusher(t, srv.URL+"/secret/path?k=v", "tok", 5*time.Second)
	for i := range 50 {
		o := p.push(context.Background(), u, []byte(`{"a":`), []byte(`1}`), uint64(i))
		if o.Class != OK {
			t.Fatalf("push %d: %+v", i, o)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("50 pushes one after another opened %d connections, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 50 {
		t.Fatalf("server saw %d requests, want 50", len(seen))
	}
	want := got{"POST", "/secret/path?k=v", "application/json", "Bearer tok", "7", `{"a":1}`}
	if seen[7] != want {
		t.Errorf("request 7: %+v, want %+v", seen[7], want)
	}
	if seen[0].seq != "" {
		t.Errorf("sequence 0 sent as Ws-Seq %q; 0 means none", seen[0].seq)
	}
}

// Answers other than the plain documented one: chunked, an errNo, a
// status, a redirect (never followed), an answer larger than the bound,
// an informational answer before the real one.
func TestH1ClassifiesAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.(http.Flusher).Flush() // no length known: chunked
			_, _ = io.WriteString(w, `{"errNo":0,`)
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, `"errMsg":"fine"}`)
		case "/errno":
			_, _ = io.WriteString(w, `{"errNo":4001,"errMsg":"no such connection id"}`)
		case "/gone":
			w.WriteHeader(http.StatusGone)
		case "/busy":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/large":
			_, _ = io.WriteString(w, `{"errNo":0,"errMsg":"`+strings.Repeat("x", 2*maxAnswer)+`"}`)
		case "/early":
			w.WriteHeader(http.StatusEarlyHints)
			_, _ = w.Write(okAnswer)
		}
	}))
	defer srv.Close()
	p, _ := h1Pusher(t, srv.URL, "", 5*time.Second)
	for _, c := range []struct {
		path string
		want Class
		err  string
	}{
		{"/chunked", OK, ""},
		{"/errno", Permanent, "gateway errNo 4001: no such connection id"},
		{"/gone", Gone, "HTTP 410"},
		{"/busy", Transient, "HTTP 503"},
		{"/moved", Permanent, "HTTP 302"},
		{"/large", Permanent, "answer"},
		{"/early", OK, ""},
		{"/chunked", OK, ""}, // after the large answer's connection was dropped
	} {
		u, _ := url.Parse(srv.URL + c.path)
		o := p.push(context.Background(), u, []byte(`{}`), nil, 0)
		if o.Class != c.want || (c.err != "" && (o.Err == nil || !strings.Contains(o.Err.Error(), c.err))) {
			t.Errorf("%s: %v (%v), want %v with %q", c.path, o.Class, o.Err, c.want, c.err)
		}
	}
}

// A server that closes a kept connection while it is idle (as servers do
// after their idle timeout) costs no failed push: the next push goes over
// a new connection, and the server sees each push once.
func TestH1ReplacesAConnectionClosedWhileIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var requests, conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				// One request per connection, answered as keep-alive, then
				// closed without a word.
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				requests.Add(1)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n"+string(okAnswer))
				time.Sleep(10 * time.Millisecond)
			}()
		}
	}()
	p, u := h1Pusher(t, "http://"+ln.Addr().String()+"/push", "", 5*time.Second)
	for i := range 5 {
		if o := p.push(context.Background(), u, []byte(`{}`), nil, 0); o.Class != OK {
			t.Fatalf("push %d: %v (%v)", i, o.Class, o.Err)
		}
		time.Sleep(50 * time.Millisecond) // the server has closed it by now
	}
	if r, c := requests.Load(), conns.Load(); r != 5 || c < 5 {
		t.Errorf("server saw %d requests on %d connections, want 5 on at least 5", r, c)
	}
}

// A gateway that does not answer: the push ends at the push timeout, or
// at once when its context is cancelled, as a transient failure.
func TestH1TimeoutAndCancel(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	p, u := h1Pusher(t, srv.URL, "", 300*time.Millisecond)
	start := time.Now()
	o := p.push(context.Background(), u, []byte(`{}`), nil, 0)
	if o.Class != Transient || o.Err == nil || !strings.Contains(o.Err.Error(), "push timeout") {
		t.Errorf("unanswered push: %v (%v), want transient push timeout", o.Class, o.Err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("unanswered push took %v with a 300ms timeout", took)
	}

	p, u = h1Pusher(t, srv.URL, "", time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	o = p.push(ctx, u, []byte(`{}`), nil, 0)
	if o.Class != Transient || o.Err == nil || !strings.Contains(o.Err.Error(), "context canceled") {
		t.Errorf("cancelled push: %v (%v), want transient context canceled", o.Class, o.Err)
	}
}

// https push URLs: TLS with the server's name checked, the token and the
// URL's path never in an error.
func TestH1TLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write(okAnswer)
	}))
	defer srv.Close()
	p, u := h1Pusher(t, srv.URL+"/secret-path", "tok", 5*time.Second)
	o := p.push(context.Background(), u, []byte(`{}`), nil, 0)
	if o.Class != Transient || o.Err == nil || !strings.Contains(o.Err.Error(), "certificate") {
		t.Errorf("push to an unknown certificate: %v (%v), want a transient certificate error", o.Class, o.Err)
	}
	if o.Err != nil && (strings.Contains(o.Err.Error(), "secret-path") || strings.Contains(o.Err.Error(), "tok")) {
		t.Errorf("error quotes the URL or token: %v", o.Err)
	}
	p.h1.tlsConf = &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	if o := p.push(context.Background(), u, []byte(`{}`), nil, 0); o.Class != OK {
		t.Errorf("push over TLS: %v (%v)", o.Class, o.Err)
	}
}

// A gateway that restarted (or closed every kept connection at once): the
// first push finds a closed one, drops the others kept, and goes through.
func TestH1AfterEveryKeptConnectionClosed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // so the pushes below overlap
		_, _ = w.Write(okAnswer)
	}))
	defer srv.Close()
	p, u := h1Pusher(t, srv.URL, "", 5*time.Second)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if o := p.push(context.Background(), u, []byte(`{}`), nil, 0); o.Class != OK {
				t.Errorf("push: %v (%v)", o.Class, o.Err)
			}
		})
	}
	wg.Wait()
	hp := p.h1.host(u)
	p.h1.mu.Lock()
	kept := len(hp.idle)
	p.h1.mu.Unlock()
	if kept < 3 {
		t.Fatalf("%d connections kept after 4 overlapping pushes, want at least 3", kept)
	}
	srv.CloseClientConnections()
	time.Sleep(50 * time.Millisecond)
	if o := p.push(context.Background(), u, []byte(`{}`), nil, 0); o.Class != OK {
		t.Errorf("push after every kept connection was closed: %v (%v)", o.Class, o.Err)
	}
}
