package wsclient

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The reconnect delay stays within [0, min(max, min·2ⁿ)], its ceiling
// doubles up to MaxBackoff, and it is spread over that range (jitter).
func TestBackoffBoundsAndJitter(t *testing.T) {
	lo, hi := 100*time.Millisecond, 5*time.Second
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 70 {
		ceil := hi
		if n < 6 {
			ceil = lo << n
		}
		var smallest, largest time.Duration = hi + 1, -1
		distinct := map[time.Duration]bool{}
		for range 2000 {
			d := backoff(n, lo, hi, r.Int64N)
			if d < 0 || d > ceil {
				t.Fatalf("attempt %d: delay %v outside [0, %v]", n, d, ceil)
			}
			smallest, largest = min(smallest, d), max(largest, d)
			distinct[d] = true
		}
		// 2000 uniform draws: the extremes land within a few percent of
		// the bounds, and nearly all differ.
		if smallest > ceil/10 || largest < ceil-ceil/10 || len(distinct) < 1900 {
			t.Fatalf("attempt %d: delays from %v to %v, %d distinct of 2000: not spread over [0, %v]", n, smallest, largest, len(distinct), ceil)
		}
	}
	// The rnd argument is the bound: the ceiling itself can be drawn.
	if d := backoff(3, lo, hi, func(m int64) int64 { return m - 1 }); d != 800*time.Millisecond {
		t.Fatalf("largest delay of attempt 3: %v, want 800ms", d)
	}
	if d := backoff(1000, lo, hi, func(m int64) int64 { return m - 1 }); d != hi {
		t.Fatalf("largest delay of attempt 1000: %v, want MaxBackoff", d)
	}
}

func TestSessionURL(t *testing.T) {
	for _, tc := range []struct {
		base     string
		fresh    bool
		key      string
		received uint64
		want     string
	}{
		{"ws://h/ws", true, "", 0, "ws://h/ws?resume=1"},
		{"wss://h/ws?app=chat&sig=a%2Bb", true, "", 0, "wss://h/ws?app=chat&sig=a%2Bb&resume=1"},
		{"ws://h/ws?app=chat", false, "inst~k+1/=&", 42, "ws://h/ws?app=chat&resume=inst~k%2B1%2F%3D%26&received=42"},
		// A resume parameter in the URL is replaced, not repeated.
		{"ws://h/ws?resume=1&x=1&received=3", false, "k", 7, "ws://h/ws?x=1&resume=k&received=7"},
		{"ws://h/ws?", true, "", 0, "ws://h/ws?resume=1"},
	} {
		u, err := url.Parse(tc.base)
		if err != nil {
			t.Fatal(err)
		}
		got := sessionURL(u, tc.fresh, tc.key, tc.received)
		if got != tc.want {
			t.Errorf("sessionURL(%s, fresh=%v, %q, %d) = %s, want %s", tc.base, tc.fresh, tc.key, tc.received, got, tc.want)
		}
		if !tc.fresh {
			q, _ := url.Parse(got)
			if k := q.Query().Get("resume"); k != tc.key {
				t.Errorf("the key read back from %s is %q, want %q", got, k, tc.key)
			}
		}
	}
}

func TestClassify(t *testing.T) {
	closeErr := func(code websocket.StatusCode) error {
		return fmt.Errorf("failed to get reader: %w", websocket.CloseError{Code: code, Reason: "why"})
	}
	for _, tc := range []struct {
		err   error
		plain bool
		want  ending
	}{
		{errors.New("EOF"), false, endResume},
		{closeErr(websocket.StatusGoingAway), false, endResume},
		{closeErr(websocket.StatusAbnormalClosure), false, endResume},
		{closeErr(websocket.StatusTryAgainLater), false, endResume},
		{closeErr(websocket.StatusServiceRestart), false, endResume},
		{closeErr(statusReset), false, endReset},
		{closeErr(websocket.StatusNormalClosure), false, endOver},
		{closeErr(websocket.StatusPolicyViolation), false, endOver},
		{closeErr(websocket.StatusMessageTooBig), false, endOver},
		{closeErr(websocket.StatusInternalError), false, endOver},
		{closeErr(websocket.StatusNoStatusRcvd), false, endOver},
		{errors.New("EOF"), true, endOver},
		{closeErr(websocket.StatusGoingAway), true, endOver},
	} {
		v := classify(tc.err, tc.plain)
		if v.end != tc.want {
			t.Errorf("classify(%v, plain=%v) = %d, want %d", tc.err, tc.plain, v.end, tc.want)
		}
		if c := websocket.CloseStatus(tc.err); c != -1 && (v.code != c || v.reason != "why") {
			t.Errorf("classify(%v): code %d reason %q, want the close's", tc.err, v.code, v.reason)
		}
	}
}

func TestParseWelcome(t *testing.T) {
	w, err := parseWelcome([]byte(`c{"t":"welcome","key":"k","id":"i","token":"tok","resumed":true,"in":7,"window":30}`))
	if err != nil || w.Key != "k" || w.ID != "i" || w.Token != "tok" || !w.Resumed || w.In != 7 || w.Window != 30 {
		t.Fatalf("parseWelcome = %+v, %v", w, err)
	}
	var re *resetError
	if _, err := parseWelcome([]byte(`c{"t":"reset","reason":"expired"}`)); !errors.As(err, &re) || re.reason != "expired" {
		t.Fatalf("parseWelcome(reset) = %v, want a resetError expired", err)
	}
	for _, bad := range []string{``, `hello`, `d{"t":"welcome"}`, `c{`, `c{}`, `c{"t":"ack","in":1}`, `c{"t":"welcome"}`} {
		if _, err := parseWelcome([]byte(bad)); !errors.Is(err, ErrProtocol) {
			t.Errorf("parseWelcome(%q) = %v, want ErrProtocol", bad, err)
		}
	}
}

func TestAckFrame(t *testing.T) {
	if got := string(ackFrame(1234)); got != `c{"t":"ack","received":1234}` {
		t.Fatalf("ackFrame(1234) = %s", got)
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	if o.MinBackoff != 100*time.Millisecond || o.MaxBackoff != 5*time.Second || o.AckEvery != 32 ||
		o.AckAfter != time.Second || o.SendBuffer != 1024 || o.ReadBuffer != 1024 || o.Logger == nil || o.HTTPClient == nil {
		t.Fatalf("defaults %+v", o)
	}
	if o := (Options{MinBackoff: 10 * time.Second}).withDefaults(); o.MaxBackoff != 10*time.Second {
		t.Fatalf("MinBackoff 10s alone: MaxBackoff %v, want raised to 10s", o.MaxBackoff)
	}
}
