package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsbridge/wsbridge/subjects"
)

const okBody = `{"errNo":0,"errMsg":"ok"}`

// pushSeq POSTs body with one Ws-Seq header per value in seqs (none when
// seqs is empty) and returns status and body.
func (e *env) pushSeq(t *testing.T, body string, seqs ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, e.srv.URL+DefaultPushPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for _, s := range seqs {
		req.Header.Add(subjects.HeaderSeq, s)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// readTexts reads n messages and returns them as strings.
func readTexts(t *testing.T, c *websocket.Conn, n int) []string {
	t.Helper()
	out := make([]string, 0, n)
	for range n {
		_, data := read(t, c)
		out = append(out, string(data))
	}
	return out
}

// TestPushSeqRepeatIsNotWritten: a push whose Ws-Seq is at or below the
// last one written to the connection, send or close, is answered exactly
// as a delivered one and never reaches the client.
func TestPushSeqRepeatIsNotWritten(t *testing.T) {
	e := newEnv(t, nil, nil)
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	send := func(seq, data string) {
		t.Helper()
		if st, body := e.pushSeq(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, data), seq); st != 200 || body != okBody {
			t.Fatalf("push %q with Ws-Seq %s: %d %s, want 200 %s", data, seq, st, body, okBody)
		}
	}
	send("1", "one")
	send("2", "two")
	send("2", "two")     // the same command again (a bridge that restarted)
	send("1", "one")     // an older one
	send("3", "three")   // the next
	send("10", "ten")    // a gap is fine: other connections' commands sit between
	send("7", "seven")   // older than the last written: never written
	send("007", "seven") // the same number
	send("11", "eleven")
	if got, want := strings.Join(readTexts(t, c, 5), ","), "one,two,three,ten,eleven"; got != want {
		t.Fatalf("client got %s, want %s", got, want)
	}

	// A close at or below the last sequence is a repeat too: the
	// connection stays open.
	if st, body := e.pushSeq(t, pushBody(subjects.ActionClosing, id, "", ""), "11"); st != 200 || body != okBody {
		t.Fatalf("repeated close: %d %s, want 200 %s", st, body, okBody)
	}
	send("12", "twelve")
	if got := readTexts(t, c, 1)[0]; got != "twelve" {
		t.Fatalf("after a repeated close the client got %q, want twelve", got)
	}
	if st, body := e.pushSeq(t, pushBody(subjects.ActionClosing, id, "", ""), "13"); st != 200 || body != okBody {
		t.Fatalf("close: %d %s", st, body)
	}
	if got := closeStatus(t, c); got != websocket.StatusNormalClosure {
		t.Errorf("close status %v, want 1000", got)
	}

	s := e.g.Stats()
	if s.FramesOut != 6 || s.PushesRepeated != 5 || s.PushesOK != 12 {
		t.Errorf("stats FramesOut %d PushesRepeated %d PushesOK %d, want 6, 5 and 12", s.FramesOut, s.PushesRepeated, s.PushesOK)
	}
	if got := testutil.ToFloat64(e.g.m.pushesRepeated); got != 5 {
		t.Errorf("wsbridge_gateway_pushes_repeated_total %v, want 5", got)
	}
}

// TestPushSeqRacingBridges: pushers that push the same commands at once
// (a bridge cut off from NATS that still pushes, and its successor), each
// in order but at its own pace, write every command exactly once and in
// order.
func TestPushSeqRacingBridges(t *testing.T) {
	const pushers, commands = 4, 40
	e := newEnv(t, nil, nil)
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	var wg sync.WaitGroup
	errs := make(chan string, pushers*commands)
	for range pushers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= commands; i++ {
				st, body := e.pushSeq(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, "m"+itoa(i)), itoa(i))
				if st != 200 || body != okBody {
					errs <- "push " + itoa(i) + ": " + itoa(st) + " " + body
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st, _ := e.pushSeq(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, "end"), itoa(commands+1)); st != 200 {
		t.Fatalf("last push: %d", st)
	}
	for i := 1; i <= commands+1; i++ {
		want := "m" + itoa(i)
		if i == commands+1 {
			want = "end"
		}
		if _, data := read(t, c); string(data) != want {
			t.Fatalf("message %d is %q, want %q: a command written twice, out of order or not at all", i, data, want)
		}
	}
	waitFramesOut(t, e.g, commands+1)
	if s := e.g.Stats(); s.FramesOut != commands+1 || s.PushesRepeated != (pushers-1)*commands {
		t.Errorf("FramesOut %d PushesRepeated %d, want %d and %d", s.FramesOut, s.PushesRepeated, commands+1, (pushers-1)*commands)
	}
}

// TestPushWithoutSeq: a push without Ws-Seq is written as it comes, as
// before the header existed: repeated, it is written again, and it neither
// moves nor is held back by the connection's last sequence.
func TestPushWithoutSeq(t *testing.T) {
	e := newEnv(t, nil, nil)
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	for _, p := range []struct{ data, seq string }{
		{"a", ""}, {"a", ""}, {"s5", "5"}, {"plain", ""}, {"s5", "5"}, {"s6", "6"},
	} {
		var seqs []string
		if p.seq != "" {
			seqs = []string{p.seq}
		}
		if st, body := e.pushSeq(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, p.data), seqs...); st != 200 || body != okBody {
			t.Fatalf("push %q: %d %s", p.data, st, body)
		}
	}
	if got, want := strings.Join(readTexts(t, c, 5), ","), "a,a,s5,plain,s6"; got != want {
		t.Errorf("client got %s, want %s", got, want)
	}
}

// TestPushSeqMalformed: a Ws-Seq that is not one decimal uint64 is refused
// with 400 and a message naming the header, and nothing is written.
func TestPushSeqMalformed(t *testing.T) {
	e := newEnv(t, nil, nil)
	c := e.dial(t, nil)
	id := e.fn.connID(t)
	bad := [][]string{
		{"abc"}, {"-1"}, {"+1"}, {"1.5"}, {""}, {"1 2"}, {"0x10"}, {"1e3"},
		{"18446744073709551616"}, // one past uint64
		{"1", "2"},               // twice
	}
	for _, seqs := range bad {
		st, body := e.pushSeq(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, "bad"), seqs...)
		var got subjects.GatewayReply
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("Ws-Seq %q: answer %q is not JSON", seqs, body)
		}
		if st != 400 || got.ErrNo != 400 || !strings.Contains(got.ErrMsg, subjects.HeaderSeq) {
			t.Errorf("Ws-Seq %q: %d %s, want 400 with errNo 400 naming %s", seqs, st, body, subjects.HeaderSeq)
		}
	}
	if st, body := e.pushSeq(t, pushBody(subjects.ActionDataSend, id, subjects.DataText, "max"), "18446744073709551615"); st != 200 {
		t.Fatalf("the largest Ws-Seq: %d %s, want 200", st, body)
	}
	if _, data := read(t, c); string(data) != "max" {
		t.Errorf("client got %q first, want max: a malformed push was written", data)
	}
	waitFramesOut(t, e.g, 1)
	if s := e.g.Stats(); s.PushesInvalid != uint64(len(bad)) || s.FramesOut != 1 {
		t.Errorf("PushesInvalid %d FramesOut %d, want %d and 1", s.PushesInvalid, s.FramesOut, len(bad))
	}
}
