package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// dlqTarget is the gateway the bridge pushes to: it refuses what it is told
// to (errNo 1, a permanent failure; 404 for one id, a gone connection) and
// records what it accepts.
type dlqTarget struct {
	refuse atomic.Bool
	gone   string // connection id answered 404

	mu       sync.Mutex
	accepted map[string][]string // connection id -> data pushed
}

func (g *dlqTarget) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body subjects.PushBody
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := body.WebSocket.SecConnectionID
	switch {
	case id == g.gone:
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errNo":404,"errMsg":"connection not found"}`)
	case g.refuse.Load():
		_, _ = io.WriteString(w, `{"errNo":1,"errMsg":"refused by the test"}`)
	default:
		g.mu.Lock()
		g.accepted[id] = append(g.accepted[id], body.WebSocket.Data)
		g.mu.Unlock()
		_, _ = io.WriteString(w, `{"errNo":0,"errMsg":"ok"}`)
	}
}

func (g *dlqTarget) got(id string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.accepted[id]...)
}

// lines counts the lines of out that start with prefix.
func lines(out, prefix string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// dlqLines decodes the JSON lines of `wsbridge dlq list --json`.
func dlqLines(t *testing.T, out string) []deadLetter {
	t.Helper()
	var ds []deadLetter
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var d deadLetter
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		ds = append(ds, d)
	}
	return ds
}

// TestDLQCommand makes real dead letters with a running bridge (a refused
// send, a gone connection, a refused broadcast), then lists them (table and
// JSON lines, filtered), shows one, and redrives the refused ones: each is
// delivered once, and a second redrive publishes nothing.
func TestDLQCommand(t *testing.T) {
	s, js := startTestNATS(t)
	nc := natstest.Connect(t, s)
	n := subjects.MustNew("")
	const (
		idA    = "conn-a"
		idGone = "conn-gone"
		idC    = "conn-c" // registered: receives the broadcast
	)
	tokA, tokGone, tokC := subjects.Token(idA), subjects.Token(idGone), subjects.Token(idC)
	target := &dlqTarget{gone: idGone, accepted: map[string][]string{}}
	target.refuse.Store(true)
	srv := httptest.NewServer(target)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kv, err := js.KeyValue(ctx, n.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(subjects.ConnectEvent{ConnectionID: idC, Token: tokC, ConnectedAt: time.Now()})
	if _, err := kv.Put(ctx, tokC, rec); err != nil {
		t.Fatal(err)
	}

	// The bridge, in process, as `wsbridge bridge` runs.
	bctx, stopBridge := context.WithCancel(context.Background())
	bridgeDone := make(chan int, 1)
	pr, pw := io.Pipe()
	go func() {
		bridgeDone <- run(bctx, []string{"bridge", "--nats-url", s.ClientURL(), "--push-url", srv.URL + "/push",
			"--http-addr", ""}, io.Discard, pw)
		pw.Close()
	}()
	defer func() {
		stopBridge()
		<-bridgeDone
	}()
	go func() { _, _ = io.Copy(io.Discard, pr) }()

	dl, err := nc.SubscribeSync(n.DeadLetters())
	if err != nil {
		t.Fatal(err)
	}
	c, err := subjects.NewClient(nc, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return c.SendText(ctx, tokA, "to a") },
		func() error { return c.SendText(ctx, tokGone, "to nobody") },
		func() error { return c.Broadcast(ctx, []byte("to all")) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
		if _, err := dl.NextMsg(time.Minute); err != nil {
			t.Fatalf("no dead letter: %v", err)
		}
	}

	// The subscription sees a dead letter as the stream stores it, not
	// after: wait until all three are stored before listing them.
	dlq, err := js.Stream(ctx, n.StreamDLQ())
	if err != nil {
		t.Fatal(err)
	}
	for {
		info, err := dlq.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs >= 3 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("WS_DLQ holds %d dead letters, want 3", info.State.Msgs)
		case <-time.After(20 * time.Millisecond):
		}
	}

	url := []string{"--nats-url", s.ClientURL()}
	list := func(args ...string) []deadLetter {
		t.Helper()
		code, out, stderr := runCmd(t, append(append([]string{"dlq", "list", "--json"}, url...), args...)...)
		if code != 0 {
			t.Fatalf("dlq list %v: exit %d: %s", args, code, stderr)
		}
		return dlqLines(t, out)
	}
	all := list()
	if len(all) != 3 {
		t.Fatalf("dlq list: %d dead letters, want 3: %+v", len(all), all)
	}
	bySeq := map[string]deadLetter{}
	for _, d := range all {
		bySeq[d.Kind+"/"+d.Reason+"/"+d.Token] = d
		if d.Error == "" || d.Attempts == "" || d.Status == "" || d.Original == "" || d.Time.IsZero() {
			t.Errorf("dead letter without its metadata: %+v", d)
		}
	}
	sendA, okA := bySeq["send/permanent/"+tokA]
	gone, okGone := bySeq["send/gone/"+tokGone]
	bcast, okC := bySeq["broadcast/permanent/"+tokC]
	if !okA || !okGone || !okC {
		t.Fatalf("dead letters %v, want a refused send to %s, a gone send to %s, a refused broadcast to %s", all, tokA, tokGone, tokC)
	}
	if sendA.Original != n.Send(tokA) || bcast.Original != n.Broadcast() || gone.Status != "404" {
		t.Errorf("original subjects %q %q, gone status %q", sendA.Original, bcast.Original, gone.Status)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--reason", "gone"}, 1},
		{[]string{"--reason", "permanent"}, 2},
		{[]string{"--kind", "send"}, 2},
		{[]string{"--kind", "broadcast"}, 1},
		{[]string{"--token", tokA}, 1},
		{[]string{"--kind", "send", "--token", tokGone}, 1},
		{[]string{"--seq", strconv.FormatUint(gone.Seq, 10)}, 1},
		{[]string{"--limit", "2"}, 2},
		{[]string{"--since", "1h"}, 3},
		{[]string{"--until", "2000-01-01T00:00:00Z"}, 0},
		{[]string{"--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, 0},
	} {
		if got := list(tc.args...); len(got) != tc.want {
			t.Errorf("dlq list %v: %d dead letters, want %d", tc.args, len(got), tc.want)
		}
	}
	if code, out, _ := runCmd(t, append([]string{"dlq", "list"}, url...)...); code != 0 || !strings.Contains(out, "SEQ") ||
		!strings.Contains(out, tokA) || !strings.Contains(out, "refused by the test") {
		t.Errorf("dlq list (table): exit %d\n%s", code, out)
	}
	for _, bad := range [][]string{{"--reason", "bored"}, {"--kind", "shout"}, {"--since", "yesterday"}, {"--seq", "x"}} {
		if code, _, stderr := runCmd(t, append(append([]string{"dlq", "list"}, url...), bad...)...); code != 2 || !strings.Contains(stderr, bad[0]) {
			t.Errorf("dlq list %v: exit %d %q; want 2 naming %s", bad, code, stderr, bad[0])
		}
	}

	// show: every header, the body.
	code, out, stderr := runCmd(t, append(append([]string{"dlq", "show", "--json"}, url...), strconv.FormatUint(sendA.Seq, 10))...)
	if code != 0 {
		t.Fatalf("dlq show: exit %d: %s", code, stderr)
	}
	var shown deadLetter
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatalf("dlq show --json %q: %v", out, err)
	}
	for _, h := range []string{subjects.HeaderError, subjects.HeaderAttempts, subjects.HeaderStatus, subjects.HeaderSubject, subjects.HeaderReason, subjects.HeaderConnID} {
		if len(shown.Headers[h]) == 0 {
			t.Errorf("dlq show: no %s in %v", h, shown.Headers)
		}
	}
	if shown.Data == nil || *shown.Data != "to a" {
		t.Errorf("dlq show: body %v, want %q", shown.Data, "to a")
	}
	if code, out, _ := runCmd(t, append(append([]string{"dlq", "show"}, url...), strconv.FormatUint(sendA.Seq, 10))...); code != 0 ||
		!strings.Contains(out, "Ws-Reason: permanent") || !strings.Contains(out, "to a") {
		t.Errorf("dlq show: exit %d\n%s", code, out)
	}
	if code, _, stderr := runCmd(t, append(append([]string{"dlq", "show"}, url...), "999999")...); code != 1 || !strings.Contains(stderr, "no dead letter 999999") {
		t.Errorf("dlq show of a missing sequence: exit %d %q", code, stderr)
	}

	outSeq := func() uint64 {
		t.Helper()
		st, err := js.Stream(ctx, n.StreamOut())
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().State.LastSeq
	}
	// A dry run publishes nothing; a redrive without a filter is refused.
	before := outSeq()
	code, out, _ = runCmd(t, append([]string{"dlq", "redrive", "--reason", "permanent"}, url...)...)
	if code != 0 || lines(out, "would ") != 2 || !strings.Contains(out, n.Send(tokC)) {
		t.Errorf("dry run: exit %d\n%s\nwant 2 'would' lines, the broadcast's to %s", code, out, n.Send(tokC))
	}
	if code, _, stderr := runCmd(t, append([]string{"dlq", "redrive", "--execute"}, url...)...); code != 2 || !strings.Contains(stderr, "--all") {
		t.Errorf("redrive with no filter: exit %d %q, want 2", code, stderr)
	}
	if got := outSeq(); got != before {
		t.Errorf("a dry run published: %s last sequence %d, was %d", n.StreamOut(), got, before)
	}

	// The gateway takes them now: redrive them, each once.
	target.refuse.Store(false)
	code, out, stderr = runCmd(t, append([]string{"dlq", "redrive", "--reason", "permanent", "--execute", "--rate", "50"}, url...)...)
	if code != 0 || lines(out, "redriven ") != 2 {
		t.Fatalf("redrive: exit %d\n%s%s", code, out, stderr)
	}
	for id, want := range map[string]string{idA: "to a", idC: "to all"} {
		deadline := time.After(time.Minute)
		for len(target.got(id)) == 0 {
			select {
			case <-deadline:
				t.Fatalf("the redriven message to %s never arrived", id)
			case <-time.After(20 * time.Millisecond):
			}
		}
		if got := target.got(id); len(got) != 1 || got[0] != want {
			t.Errorf("pushed to %s: %q, want %q once", id, got, want)
		}
	}
	// A second redrive skips them and publishes nothing.
	before = outSeq()
	code, out, _ = runCmd(t, append([]string{"dlq", "redrive", "--reason", "permanent", "--execute"}, url...)...)
	if code != 0 || lines(out, "skip ") != 2 || lines(out, "redriven ") != 0 {
		t.Errorf("second redrive: exit %d\n%s\nwant both skipped", code, out)
	}
	if got := outSeq(); got != before {
		t.Errorf("the second redrive published: %s last sequence %d, was %d", n.StreamOut(), got, before)
	}
	// The gone connection's dead letter would be redriven on request; the
	// listing tells which were.
	for _, d := range list() {
		if red := d.Redriven != nil; red != (d.Reason == "permanent") {
			t.Errorf("dead letter %d (%s): redriven %+v", d.Seq, d.Reason, d.Redriven)
		}
	}
	if st, err := js.Stream(ctx, "KV_"+n.RedriveBucket()); err != nil || st.CachedInfo().Config.MaxAge == 0 {
		t.Errorf("bucket %s: TTL from %s's max age wanted: %v", n.RedriveBucket(), n.StreamDLQ(), err)
	}
}
