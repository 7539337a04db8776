package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/time/rate"
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
	client  *http.Client
	url     string
	limiter *rate.Limiter // nil: unlimited
}

type gatewayAnswer struct {
	ErrNo *int   `json:"errNo"`
	Msg   string `json:"errMsg"`
}

// push posts one body and classifies the answer. ctx cancels the push
// (shutdown); a cancelled push is transient, so the message is kept.
func (p *pusher) push(ctx context.Context, body []byte) Outcome {
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			return Classify(0, 0, fmt.Errorf("push rate limit: %w", err), nil)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		// The URL was validated at start; this is not the message's fault.
		return Classify(0, 0, fmt.Errorf("build push request: %w", err), nil)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		// The error text of net/http quotes the URL, whose path is secret.
		return Classify(0, 0, scrubURLError(err), nil)
	}
	data, readErr := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	// Drain a little more so the connection can be reused, then close.
	_, _ = io.CopyN(io.Discard, resp.Body, maxAnswer)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Classify(resp.StatusCode, 0, nil, nil)
	}
	if readErr != nil {
		return Classify(0, 0, fmt.Errorf("read gateway answer: %w", readErr), nil)
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
	o := Classify(resp.StatusCode, errNo, nil, parseErr)
	if o.Class == Permanent && parseErr == nil && a.Msg != "" {
		o.Err = fmt.Errorf("gateway errNo %d: %s", errNo, clipString(a.Msg, 200))
	}
	return o
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
