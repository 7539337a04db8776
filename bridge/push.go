package bridge

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

// maxAnswer bounds how much of a gateway answer is read; the documented
// answer is a few dozen bytes.
const maxAnswer = 64 << 10

// newHTTPClient is the keep-alive client to the gateway: one pool bounded by
// concurrency, so the bridge never opens more connections than pushes it
// runs at once, and idle connections are reused instead of re-dialled.
func newHTTPClient(concurrency int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          concurrency,
		MaxIdleConnsPerHost:   concurrency,
		MaxConnsPerHost:       concurrency,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// pusher posts reverse-push bodies to the gateway.
type pusher struct {
	h1      *h1           // nil: every push through client
	client  *http.Client  // pushes h1 does not take (a proxy, Deps.HTTPClient)
	url     *url.URL      // PushURL, parsed once; shared by every request, never modified; nil when not set
	header  http.Header   // idem: Content-Type, and Authorization with a push token
	limiter *rate.Limiter // nil: unlimited
	auth    string        // the Authorization header's value, or ""
}

func newPusher(client *http.Client, pushURL, pushToken string) (*pusher, error) {
	header := http.Header{"Content-Type": {"application/json"}}
	if pushToken != "" {
		header.Set("Authorization", "Bearer "+pushToken)
	}
	if pushURL == "" {
		return &pusher{client: client, header: header, auth: header.Get("Authorization")}, nil
	}
	u, err := url.Parse(pushURL)
	if err != nil {
		// Not err: its text quotes the whole URL, whose path is secret.
		return nil, fmt.Errorf("push URL %s does not parse", redactPushURL(pushURL))
	}
	// As http.NewRequest does: "host:" is "host".
	u.Host = strings.TrimSuffix(u.Host, ":")
	return &pusher{client: client, url: u, header: header, auth: header.Get("Authorization")}, nil
}

type gatewayAnswer struct {
	ErrNo *int   `json:"errNo"`
	Msg   string `json:"errMsg"`
}

// okAnswer is the gateway's documented success answer; an answer equal to
// it needs no JSON decoding.
var okAnswer = []byte(`{"errNo":0,"errMsg":"ok"}`)

// answerBufs holds the buffers gateway answers are read into; an answer is
// a few dozen bytes.
var answerBufs = sync.Pool{New: func() any { b := make([]byte, 512); return &b }}

// push posts one body, head followed by tail (nil when head is the whole
// body), to u and classifies the answer; seq, when not 0, goes in the
// Ws-Seq header. ctx cancels the push (shutdown); a cancelled push is
// transient, so the message is kept.
func (p *pusher) push(ctx context.Context, u *url.URL, head, tail []byte, seq uint64) Outcome {
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			return Classify(0, 0, fmt.Errorf("push rate limit: %w", err), nil)
		}
	}
	bufp := answerBufs.Get().(*[]byte)
	defer answerBufs.Put(bufp)
	if p.h1 != nil {
		if hp := p.h1.host(u); hp != nil {
			auth := p.auth
			if auth == "" && u.User != nil {
				auth = basicAuth(u.User) // what net/http does with userinfo
			}
			r := h1Request{u: u, contentType: "application/json", auth: auth, seq: seq}
			status, data, err := p.h1.do(ctx, hp, &r, head, tail, *bufp)
			if err != nil {
				return Classify(0, 0, err, nil)
			}
			return classifyAnswer(status, data, nil)
		}
	}
	// An empty URL parses without allocating; the pre-parsed one replaces
	// it (the client only reads req.URL and req.Header).
	var body io.Reader = bytes.NewReader(head)
	if tail != nil {
		body = &twoPart{head, tail}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "", body)
	if err != nil {
		return Classify(0, 0, fmt.Errorf("build push request: %w", err), nil)
	}
	if tail != nil {
		// What NewRequest does for a bytes.Reader: a known length (no
		// chunking) and a body the transport can replay.
		req.ContentLength = int64(len(head) + len(tail))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(&twoPart{head, tail}), nil }
	}
	req.URL, req.Host, req.Header = u, u.Host, p.header
	if seq != 0 {
		req.Header = p.header.Clone()
		req.Header.Set(subjects.HeaderSeq, strconv.FormatUint(seq, 10))
	}
	resp, err := p.client.Do(req)
	if err != nil {
		// The error text of net/http quotes the URL, whose path is secret.
		return Classify(0, 0, scrubURLError(err), nil)
	}
	data, readErr := readAnswer(resp.Body, *bufp)
	resp.Body.Close()
	return classifyAnswer(resp.StatusCode, data, readErr)
}

// classifyAnswer classifies a gateway's answer: its status, and its body
// (data) as far as it was read (readErr).
func classifyAnswer(status int, data []byte, readErr error) Outcome {
	if status != http.StatusOK {
		return Classify(status, 0, nil, nil)
	}
	if readErr != nil {
		return Classify(0, 0, fmt.Errorf("read gateway answer: %w", readErr), nil)
	}
	if bytes.Equal(data, okAnswer) {
		return Outcome{Class: OK, Status: http.StatusOK}
	}
	var a gatewayAnswer
	parseErr := json.Unmarshal(data, &a)
	if parseErr == nil && a.ErrNo == nil {
		parseErr = fmt.Errorf("no errNo in answer")
	}
	errNo := 0
	if a.ErrNo != nil {
		errNo = *a.ErrNo
	}
	o := Classify(status, errNo, nil, parseErr)
	if o.Class == Permanent && parseErr == nil && a.Msg != "" {
		o.Err = fmt.Errorf("gateway errNo %d: %s", errNo, clipString(a.Msg, 200))
	}
	return o
}

func basicAuth(u *url.Userinfo) string {
	pass, _ := u.Password()
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass))
}

// twoPart reads a then b without copying them together.
type twoPart struct{ a, b []byte }

func (r *twoPart) Read(p []byte) (int, error) {
	if len(r.a) == 0 {
		r.a, r.b = r.b, nil
	}
	if len(r.a) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.a)
	r.a = r.a[n:]
	return n, nil
}

// readAnswer reads at most maxAnswer bytes of r, into buf while they fit,
// and drains up to maxAnswer more so the connection can be reused. The
// answer it returns may alias buf.
func readAnswer(r io.Reader, buf []byte) ([]byte, error) {
	n, err := io.ReadFull(r, buf)
	switch err {
	case io.EOF, io.ErrUnexpectedEOF:
		return buf[:n], nil
	case nil:
		// Larger than buf: read the rest as before.
		rest, err := io.ReadAll(io.LimitReader(r, int64(maxAnswer-n)))
		data := append(buf[:n:n], rest...)
		_, _ = io.CopyN(io.Discard, r, maxAnswer)
		return data, err
	}
	return buf[:n], err
}

// scrubURLError drops the URL from a *url.Error, keeping the operation and
// the cause.
func scrubURLError(err error) error {
	type unwrapper interface{ Unwrap() error }
	if ue, ok := err.(interface {
		Timeout() bool
		unwrapper
	}); ok {
		if inner := ue.Unwrap(); inner != nil {
			if ue.Timeout() {
				return fmt.Errorf("push timeout: %w", inner)
			}
			return fmt.Errorf("push: %w", inner)
		}
	}
	return err
}

func clipString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// pushCounters are the pushes_total children, resolved once: WithLabelValues
// hashes its labels on every call.
type pushCounters [2][4]prometheus.Counter

func newPushCounters(m *metrics.Metrics) pushCounters {
	var c pushCounters
	for i, action := range []string{metrics.ActionSend, metrics.ActionClose} {
		for _, class := range []Class{OK, Transient, Permanent, Gone} {
			c[i][class] = m.Pushes.WithLabelValues(action, class.String())
		}
	}
	return c
}

func (c *pushCounters) inc(close bool, class Class) {
	i := 0
	if close {
		i = 1
	}
	if class >= OK && class <= Gone {
		c[i][class].Inc()
	}
}
