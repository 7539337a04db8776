package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wsbridge/wsbridge/metrics"
	"github.com/wsbridge/wsbridge/subjects"
)

func TestOrderPerConnectionUnderLoad(t *testing.T) {
	e := newEnv(t, nil)
	const conns, per = 50, 100
	var msgs []*nats.Msg
	// Interleave connections so the stream mixes them like real traffic.
	for i := 0; i < per; i++ {
		for c := 0; c < conns; c++ {
			tok := subjects.Token(fmt.Sprintf("conn-%d==", c))
			msgs = append(msgs, &nats.Msg{Subject: e.names.Send(tok), Data: []byte(strconv.Itoa(i))})
		}
	}
	e.publishAsync(msgs)
	b := e.start(nil)
	waitFor(t, "all pushes", 60*time.Second, func() bool { return e.tg.delivered() >= conns*per })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	// A partition dropped on a loaded machine (a renewal that missed its
	// fence) is taken again from its last commit: its connections may see
	// that window again, in order, on a target without Ws-Seq.
	windows := int(e.drops.Load())
	want := make([]int, per)
	for i := range want {
		want[i] = i
	}
	repeats := 0
	for c := 0; c < conns; c++ {
		var got []int
		for _, p := range e.tg.of(fmt.Sprintf("conn-%d==", c)) {
			if p.Action != subjects.ActionDataSend || p.DataType != subjects.DataText {
				t.Errorf("conn %d: push %+v, want a text send", c, p)
			}
			n, _ := strconv.Atoi(p.Data)
			got = append(got, n)
		}
		repeats += checkWindows(t, fmt.Sprintf("conn %d", c), got, want, windows)
	}
	// A push cut off by its partition's drop reached the target but is not
	// counted as delivered: between the two.
	if got := testutil.ToFloat64(b.Metrics().Pushes.WithLabelValues(metrics.ActionSend, metrics.ResultOK)); got < conns*per || got > float64(conns*per+repeats) {
		t.Errorf("pushes_total{send,ok} = %v, want %d to %d (%d repeated after %d partitions dropped)", got, conns*per, conns*per+repeats, repeats, windows)
	}
}

func TestTransientRetriedInOrder(t *testing.T) {
	// The first message fails three times with 503, then succeeds; the
	// messages after it must not overtake it.
	e := newEnv(t, func(p push, attempt int) (int, int) {
		if p.Data == "first" && attempt <= 3 {
			return http.StatusServiceUnavailable, 0
		}
		if p.Data == "timeout" && attempt == 1 {
			return http.StatusRequestTimeout, 0
		}
		return http.StatusOK, 0
	})
	tok := subjects.Token("c1")
	for _, d := range []string{"first", "second", "timeout", "third"} {
		e.publish(e.names.Send(tok), []byte(d))
	}
	b := e.start(nil)
	waitFor(t, "four pushes", 20*time.Second, func() bool { return e.tg.delivered() >= 4 })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	var got []string
	for _, p := range e.tg.of("c1") {
		got = append(got, p.Data)
	}
	if want := "first,second,timeout,third"; strings.Join(got, ",") != want {
		t.Errorf("accepted pushes = %v, want %s exactly once each", got, want)
	}
	if got := testutil.ToFloat64(b.Metrics().Retries); got != 4 {
		t.Errorf("retries_total = %v, want 4", got)
	}
}

func TestRetriesUsedUp(t *testing.T) {
	e := newEnv(t, func(p push, attempt int) (int, int) { return http.StatusBadGateway, 0 })
	dlq := e.collect(e.names.DeadLetters())
	tok := subjects.Token("c2")
	e.publish(e.names.Send(tok), []byte("never"))
	b := e.start(func(o *Options) { o.MaxAttempts = 3 })
	waitFor(t, "dead letter", 20*time.Second, func() bool { return dlq.len() >= 1 })
	m := dlq.all()[0]
	if m.Subject != e.names.DeadLetter(subjects.KindSend, tok) || m.Header.Get(subjects.HeaderReason) != "retries" ||
		m.Header.Get(subjects.HeaderAttempts) != "3" || m.Header.Get(subjects.HeaderStatus) != "502" || string(m.Data) != "never" {
		t.Errorf("dead letter %s %v %q", m.Subject, m.Header, m.Data)
	}
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	if got := testutil.ToFloat64(b.Metrics().DeadLetters.WithLabelValues("retries")); got != 1 {
		t.Errorf("dead_letters_total{retries} = %v, want 1", got)
	}
}

func TestPermanentGoneAndClose(t *testing.T) {
	e := newEnv(t, func(p push, attempt int) (int, int) {
		switch p.ConnID {
		case "perm-400":
			return http.StatusBadRequest, 0
		case "perm-errno":
			return http.StatusOK, 1001
		case "gone":
			return http.StatusNotFound, 404
		}
		return http.StatusOK, 0
	})
	e.register("perm-400", "perm-errno", "gone", "closing")
	dlq := e.collect(e.names.DeadLetters())
	disc := e.collect(e.names.InboundKind(subjects.KindDisconnect))
	b := e.start(nil)
	e.publish(e.names.Send(subjects.Token("perm-400")), []byte("a"), subjects.HeaderMsgID, "pub-1", "X-App", "kept")
	e.publish(e.names.Send(subjects.Token("perm-errno")), []byte{0, 1, 2}, subjects.HeaderDataType, subjects.DataBinary)
	e.publish(e.names.Send(subjects.Token("gone")), []byte("c"))
	e.publish(e.names.Close(subjects.Token("closing")), nil)
	waitFor(t, "three dead letters", 20*time.Second, func() bool { return dlq.len() >= 3 })
	waitFor(t, "two disconnect events", 20*time.Second, func() bool { return disc.len() >= 2 })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)

	tests := []struct {
		id, kind, reason, status, data string
	}{
		{"perm-400", "send", "permanent", "400", "a"},
		{"perm-errno", "send", "permanent", "200", "\x00\x01\x02"},
		{"gone", "send", "gone", "404", "c"},
	}
	for _, tt := range tests {
		subj := e.names.DeadLetter(subjects.Kind(tt.kind), subjects.Token(tt.id))
		m := dlq.bySubject(subj)
		if m == nil {
			t.Errorf("no dead letter on %s", subj)
			continue
		}
		h := m.Header
		if string(m.Data) != tt.data || h.Get(subjects.HeaderReason) != tt.reason || h.Get(subjects.HeaderStatus) != tt.status ||
			h.Get(subjects.HeaderAttempts) != "1" || h.Get(subjects.HeaderSubject) != e.names.Send(subjects.Token(tt.id)) ||
			h.Get(subjects.HeaderError) == "" || h.Get(subjects.HeaderConnID) != tt.id {
			t.Errorf("dead letter %s: data %q headers %v; want reason %s status %s", subj, m.Data, h, tt.reason, tt.status)
		}
	}
	if m := dlq.bySubject(e.names.DeadLetter(subjects.KindSend, subjects.Token("perm-400"))); m != nil && m.Header.Get("X-App") != "kept" {
		t.Errorf("original header not kept: %v", m.Header)
	}
	if m := dlq.bySubject(e.names.DeadLetter(subjects.KindSend, subjects.Token("perm-errno"))); m != nil &&
		!strings.Contains(m.Header.Get(subjects.HeaderError), "1001") {
		t.Errorf("Ws-Error %q does not name the errNo", m.Header.Get(subjects.HeaderError))
	}
	for _, c := range []struct{ id, reason string }{{"gone", "gone"}, {"closing", "closed"}} {
		m := disc.bySubject(e.names.Disconnect(subjects.Token(c.id)))
		if m == nil {
			t.Errorf("no disconnect event for %s", c.id)
			continue
		}
		var ev subjects.DisconnectEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Reason != c.reason || ev.ConnectionID != c.id || ev.Token != subjects.Token(c.id) {
			t.Errorf("disconnect of %s = %s (%v), want reason %s", c.id, m.Data, err, c.reason)
		}
		if m.Header.Get(subjects.HeaderConnID) != c.id || m.Header.Get(subjects.HeaderMsgID) == "" {
			t.Errorf("disconnect headers %v", m.Header)
		}
		e.waitRecordGone(t, subjects.Token(c.id), c.id)
	}
	if !e.kvHas(subjects.Token("perm-400")) {
		t.Error("a permanent failure deleted the registry entry")
	}
	if got := e.tg.of("closing"); len(got) != 1 || got[0].Action != subjects.ActionClosing || got[0].Data != "" {
		t.Errorf("close pushes = %+v", got)
	}
	if got := testutil.ToFloat64(b.Metrics().DeadLetters.WithLabelValues("gone")); got != 1 {
		t.Errorf("dead_letters_total{gone} = %v", got)
	}
}

func TestBinaryBody(t *testing.T) {
	e := newEnv(t, nil)
	e.start(nil)
	tok := subjects.Token("bin")
	e.publish(e.names.Send(tok), []byte{0xff, 0x00, 'a'}, subjects.HeaderDataType, subjects.DataBinary)
	e.publish(e.names.Send(tok), []byte("héllo"))
	waitFor(t, "two pushes", 10*time.Second, func() bool { return e.tg.delivered() >= 2 })
	got := e.tg.of("bin")
	if got[0].DataType != "binary" || got[0].Data != b64("\xff\x00a") || got[1].DataType != "text" || got[1].Data != "héllo" {
		t.Errorf("pushes = %+v", got)
	}
}

func TestBroadcastWithFailures(t *testing.T) {
	const n = 1000
	failing := func(i int) bool { return i%100 == 7 }
	e := newEnv(t, func(p push, attempt int) (int, int) {
		var i int
		fmt.Sscanf(p.ConnID, "b-%d", &i)
		if failing(i) {
			return http.StatusForbidden, 0
		}
		return http.StatusOK, 0
	})
	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, fmt.Sprintf("b-%d", i))
	}
	e.registerEvents(func(ev *subjects.ConnectEvent) {
		if strings.HasSuffix(ev.ConnectionID, "0") {
			ev.Groups = []string{"tens"}
			ev.UserID = "ten"
		}
	}, ids...)
	dlq := e.collect(e.names.DeadLetters())
	b := e.start(func(o *Options) { o.Concurrency = 32 })
	e.publish(e.names.Broadcast(), []byte("hello all"), subjects.HeaderExclude, subjects.Token("b-1")+","+subjects.Token("b-2"))
	wantOK := 0
	for i := 0; i < n; i++ {
		if !failing(i) && i != 1 && i != 2 {
			wantOK++
		}
	}
	waitFor(t, "broadcast pushes", 60*time.Second, func() bool { return e.tg.delivered() >= wantOK && dlq.len() >= n/100 })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	for i := 0; i < n; i++ {
		got := len(e.tg.of(fmt.Sprintf("b-%d", i)))
		want := 1
		if failing(i) || i == 1 || i == 2 {
			want = 0
		}
		// Once more per partition dropped on a loaded machine (the
		// window since its last commit, again).
		if got < want || got > want*(1+int(e.drops.Load())) {
			t.Errorf("b-%d got %d pushes, want %d (%d partitions dropped)", i, got, want, e.drops.Load())
		}
	}
	for i := 7; i < n; i += 100 {
		subj := e.names.DeadLetter(subjects.KindBroadcast, subjects.Token(fmt.Sprintf("b-%d", i)))
		if m := dlq.bySubject(subj); m == nil || string(m.Data) != "hello all" || m.Header.Get(subjects.HeaderReason) != "permanent" {
			t.Errorf("dead letter %s = %v", subj, m)
		}
	}
	if dlq.len() != n/100 {
		t.Errorf("%d dead letters, want %d", dlq.len(), n/100)
	}

	// Group and user sends go through the same index.
	before := e.tg.delivered()
	e.publish(e.names.Group("tens"), []byte("to group"))
	e.publish(e.names.User("ten"), []byte("to user"))
	waitFor(t, "group and user pushes", 20*time.Second, func() bool { return e.tg.delivered() >= before+200 })
	for _, id := range []string{"b-0", "b-10", "b-990"} {
		got := e.tg.of(id)
		if len(got) != 3 || got[1].Data != "to group" || got[2].Data != "to user" {
			t.Errorf("%s pushes = %+v", id, got)
		}
	}
	if got := testutil.ToFloat64(b.Metrics().RegistryConnections); got != n {
		t.Errorf("registry_connections = %v, want %d", got, n)
	}
}

func TestBadOutboundMessages(t *testing.T) {
	e := newEnv(t, nil)
	dlq := e.collect(e.names.DeadLetters())
	e.start(nil)
	good := subjects.Token("ok")
	cases := []struct {
		subject, dt string
		data        []byte
		dlqSubject  string
	}{
		{"ws.out.send.bad+token", "", []byte("x"), "ws.dlq.invalid"},
		{"ws.out.send.YWJ", "", []byte("x"), "ws.dlq.invalid"}, // non-canonical base64
		{"ws.out.shout." + good, "", []byte("x"), "ws.dlq.invalid"},
		{e.names.Send(good), "morse", []byte("x"), e.names.DeadLetter(subjects.KindSend, good)},
		{e.names.Send(good), "", []byte{0xff, 0xfe}, e.names.DeadLetter(subjects.KindSend, good)},
	}
	for _, c := range cases {
		var hdr []string
		if c.dt != "" {
			hdr = []string{subjects.HeaderDataType, c.dt}
		}
		e.publish(c.subject, c.data, hdr...)
	}
	// Three tokens after P.out is the stream's stored, partitioned form:
	// the stream does not capture it from publishers, who get an error.
	if _, err := e.js.Publish(context.Background(), "ws.out.send."+good+".extra", []byte("x")); err == nil {
		t.Errorf("publish to ws.out.send.T.extra accepted, want no stream")
	}
	e.publish(e.names.Send(good), []byte("fine"))
	waitFor(t, "dead letters", 20*time.Second, func() bool { return dlq.len() >= len(cases) })
	waitFor(t, "good push", 10*time.Second, func() bool { return e.tg.delivered() >= 1 })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	got := dlq.all()
	if len(got) != len(cases) {
		t.Fatalf("%d dead letters, want %d", len(got), len(cases))
	}
	// Partitions work in parallel: match dead letters to cases by the
	// original subject and error, not by arrival order.
	for i, c := range cases {
		var m *nats.Msg
		for _, g := range got {
			if g.Header.Get(subjects.HeaderSubject) == c.subject && (c.dt == "" || g.Header.Get(subjects.HeaderDataType) == c.dt) &&
				(c.dt != "" || c.subject != e.names.Send(good) || g.Header.Get(subjects.HeaderDataType) == "") {
				m = g
			}
		}
		if m == nil {
			t.Errorf("case %d (%s): no dead letter", i, c.subject)
			continue
		}
		if m.Subject != c.dlqSubject || m.Header.Get(subjects.HeaderReason) != "invalid" || m.Header.Get(subjects.HeaderSubject) != c.subject || m.Header.Get(subjects.HeaderError) == "" {
			t.Errorf("case %d (%s): dead letter %s %v", i, c.subject, m.Subject, m.Header)
		}
	}
	if p := e.tg.of("ok"); len(p) != 1 || p[0].Data != "fine" {
		t.Errorf("pushes = %+v", p)
	}
}

func TestGracefulShutdownLosesNothing(t *testing.T) {
	var slow atomic.Bool
	slow.Store(true)
	e := newEnv(t, func(p push, attempt int) (int, int) {
		if slow.Load() {
			time.Sleep(2 * time.Millisecond)
		}
		return http.StatusOK, 0
	})
	const conns, per = 20, 100
	var msgs []*nats.Msg
	for i := 0; i < per; i++ {
		for c := 0; c < conns; c++ {
			msgs = append(msgs, &nats.Msg{Subject: e.names.Send(subjects.Token(fmt.Sprintf("g%d", c))), Data: []byte(strconv.Itoa(i))})
		}
	}
	e.publishAsync(msgs)
	b1 := e.start(func(o *Options) { o.Concurrency = 4 })
	waitFor(t, "some pushes", 30*time.Second, func() bool { return e.tg.delivered() >= 200 })
	if err := b1.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := b1.Stop(context.Background()); err != nil { // idempotent
		t.Fatalf("second Stop: %v", err)
	}
	mid := e.tg.delivered()
	if mid >= conns*per {
		t.Logf("first bridge finished everything before stopping (%d)", mid)
	}
	slow.Store(false)
	e.start(nil)
	waitFor(t, "all pushes after restart", 60*time.Second, func() bool { return e.tg.delivered() >= conns*per })
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)
	dups := e.tg.delivered() - conns*per
	t.Logf("stopped after %d pushes; duplicates after restart: %d", mid, dups)
	for c := 0; c < conns; c++ {
		got := e.tg.of(fmt.Sprintf("g%d", c))
		seen := map[string]bool{}
		next := 0
		for _, p := range got {
			if seen[p.Data] {
				continue
			}
			seen[p.Data] = true
			if p.Data != strconv.Itoa(next) {
				t.Errorf("g%d: first delivery of %s after %d: order broken", c, p.Data, next-1)
				break
			}
			next++
		}
		if len(seen) != per {
			t.Errorf("g%d: %d distinct messages, want %d", c, len(seen), per)
		}
	}
}

func TestAPI(t *testing.T) {
	e := newEnv(t, nil)
	e.registerEvents(func(ev *subjects.ConnectEvent) {
		ev.UserID = "alice"
		ev.Groups = []string{"lobby"}
	}, "a1", "a2")
	e.register("x1")
	b := e.start(nil)
	req := func(subject string, body any) []byte {
		t.Helper()
		data, _ := json.Marshal(body)
		m, err := e.nc.Request(subject, data, 5*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		return m.Data
	}
	var got subjects.ConnectEvent
	if err := json.Unmarshal(req(e.names.ConnGet(), subjects.ConnGetRequest{Token: subjects.Token("a1")}), &got); err != nil || got.ConnectionID != "a1" || got.UserID != "alice" {
		t.Errorf("conn.get = %+v, %v", got, err)
	}
	var apiErr subjects.APIError
	for _, body := range []any{subjects.ConnGetRequest{Token: subjects.Token("nobody")}, subjects.ConnGetRequest{Token: "bad+tok"}, "not an object"} {
		apiErr = subjects.APIError{}
		if err := json.Unmarshal(req(e.names.ConnGet(), body), &apiErr); err != nil || apiErr.Error == "" {
			t.Errorf("conn.get %v = %+v, want an error", body, apiErr)
		}
	}
	var list subjects.ConnListReply
	if err := json.Unmarshal(req(e.names.ConnList(), subjects.ConnListRequest{}), &list); err != nil || list.Total != 3 || len(list.Connections) != 3 {
		t.Errorf("conn.list = %+v, %v", list, err)
	}
	list = subjects.ConnListReply{}
	if err := json.Unmarshal(req(e.names.ConnList(), subjects.ConnListRequest{User: "alice", Limit: 1}), &list); err != nil || list.Total != 2 || len(list.Connections) != 1 {
		t.Errorf("conn.list user = %+v, %v", list, err)
	}
	got = subjects.ConnectEvent{}
	if err := json.Unmarshal(req(e.names.GroupAdd(), subjects.GroupRequest{Token: subjects.Token("x1"), Groups: []string{"vip", "lobby"}}), &got); err != nil ||
		strings.Join(got.Groups, ",") != "vip,lobby" || got.ConnectionID != "x1" {
		t.Errorf("group.add = %+v, %v", got, err)
	}
	got = subjects.ConnectEvent{}
	if err := json.Unmarshal(req(e.names.GroupRemove(), subjects.GroupRequest{Token: subjects.Token("a1"), Groups: []string{"lobby"}}), &got); err != nil ||
		len(got.Groups) != 0 {
		t.Errorf("group.remove = %+v, %v", got, err)
	}
	waitFor(t, "index sees group changes", 10*time.Second, func() bool {
		g := b.idx.group("lobby", nil)
		return len(g) == 2 && g[0] != subjects.Token("a1") && g[1] != subjects.Token("a1")
	})
	list = subjects.ConnListReply{}
	if err := json.Unmarshal(req(e.names.ConnList(), subjects.ConnListRequest{Group: "lobby"}), &list); err != nil || list.Total != 2 {
		t.Errorf("conn.list group = %+v, %v", list, err)
	}
	for _, body := range []any{subjects.GroupRequest{Token: subjects.Token("nobody"), Groups: []string{"g"}}, subjects.GroupRequest{Token: subjects.Token("x1")},
		subjects.GroupRequest{Token: subjects.Token("x1"), Groups: []string{"a.b"}}} {
		apiErr = subjects.APIError{}
		if err := json.Unmarshal(req(e.names.GroupAdd(), body), &apiErr); err != nil || apiErr.Error == "" {
			t.Errorf("group.add %+v = %+v, want an error", body, apiErr)
		}
	}
	// Concurrent adds all land (optimistic concurrency retries).
	done := make(chan struct{})
	for i := 0; i < 8; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			data, _ := json.Marshal(subjects.GroupRequest{Token: subjects.Token("a2"), Groups: []string{fmt.Sprintf("c%d", i)}})
			_, _ = e.nc.Request(e.names.GroupAdd(), data, 5*time.Second)
		}()
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	got = subjects.ConnectEvent{}
	_ = json.Unmarshal(req(e.names.ConnGet(), subjects.ConnGetRequest{Token: subjects.Token("a2")}), &got)
	if len(got.Groups) != 9 {
		t.Errorf("after concurrent adds groups = %v, want lobby + 8", got.Groups)
	}
}

func TestOpsEndpointsAndMetricsLint(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(func(o *Options) { o.HTTPAddr = "127.0.0.1:0" })
	e.publish(e.names.Send(subjects.Token("m")), []byte("x"))
	e.nc.Publish(e.names.Message(subjects.Token("m")), []byte("hi"))
	waitFor(t, "push", 10*time.Second, func() bool { return e.tg.delivered() >= 1 })
	waitFor(t, "inbound counted", 10*time.Second, func() bool {
		return testutil.ToFloat64(b.Metrics().InboundEvents.WithLabelValues("message")) >= 1
	})
	problems, err := testutil.GatherAndLint(b.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
	base := "http://" + b.HTTPAddr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d %s", code, body)
	}
	code, body := get("/metrics")
	for _, name := range []string{"wsbridge_pushes_total", "wsbridge_push_duration_seconds_bucket", "wsbridge_delivery_lag_seconds_count",
		"wsbridge_dead_letters_total", "wsbridge_nats_connected 1", "wsbridge_consumer_pending"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics (%d) lacks %s", code, name)
		}
	}
	if strings.Contains(body, subjects.Token("m")) {
		t.Error("/metrics leaks a connection token")
	}
	// Not ready once NATS is gone.
	e.s.Shutdown()
	waitFor(t, "readyz to fail", 10*time.Second, func() bool { c, _ := get("/readyz"); return c == http.StatusServiceUnavailable })
}

func TestOptionsValidate(t *testing.T) {
	good := Options{PushURL: "http://gw/api-x"}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := []func(*Options){
		func(o *Options) { o.PushURL = "" },
		func(o *Options) { o.PushURL = "ftp://x/y" },
		func(o *Options) { o.PushToken = "two words" },
		func(o *Options) { o.Prefix = "a b" },
		func(o *Options) { o.Concurrency = -1 },
		func(o *Options) { o.ReplayWindow = -time.Second },
		func(o *Options) { o.BackoffMax = time.Millisecond },
		func(o *Options) { o.BackoffJitter = 2 },
		func(o *Options) { o.PushRate = -1 },
		func(o *Options) { o.Partitions = subjects.MaxPartitions + 1 },
		func(o *Options) { o.Partitions = -1 },
		func(o *Options) { o.LeaseTTL = time.Second - time.Millisecond },
		func(o *Options) { o.ID = "has space" },
	}
	// At the limits: accepted.
	for i, mod := range []func(*Options){
		func(o *Options) { o.Partitions = subjects.MaxPartitions },
		func(o *Options) { o.Partitions = 1 },
		func(o *Options) { o.LeaseTTL = time.Second },
	} {
		o := good
		mod(&o)
		if err := o.Validate(); err != nil {
			t.Errorf("limit case %d: Validate() = %v, want nil", i, err)
		}
	}
	for i, mod := range bad {
		o := good
		mod(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("case %d: Validate() = nil, want an error", i)
		}
	}
	if _, err := New(good, Deps{}); err == nil {
		t.Error("New without a connection succeeded")
	}
	if got := redactPushURL("https://user:pw@set-1.apigateway.tencentyun.com/api-secret?x=1"); got != "https://set-1.apigateway.tencentyun.com" {
		t.Errorf("redactPushURL = %q", got)
	}
}

// TestMetricsOnTheOwnersRegistry: the bridge registers its own instruments
// on the Registerer it is given and serves its Gatherer; the Go and process
// collectors are the owner's.
func TestMetricsOnTheOwnersRegistry(t *testing.T) {
	e := newEnv(t, nil)
	own := e.start(nil)
	mfs, err := own.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "wsbridge_") {
			t.Errorf("the bridge's own registry serves %s, want only wsbridge_*", mf.GetName())
		}
	}

	reg := metrics.NewProcessRegistry()
	b := startBridge(t, Options{PushURL: e.tg.srv.URL, HTTPAddr: "127.0.0.1:0"}, Deps{Conn: e.nc, Registerer: reg, Gatherer: reg})
	resp, err := http.Get("http://" + b.HTTPAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "wsbridge_pushes_total"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics on the owner's registry lacks %s", name)
		}
	}

	for _, d := range []Deps{{Conn: e.nc, Registerer: reg}, {Conn: e.nc, Gatherer: reg}} {
		if _, err := New(Options{PushURL: e.tg.srv.URL}, d); err == nil || !strings.Contains(err.Error(), "go together") {
			t.Errorf("New with one of Registerer, Gatherer: %v, want an error", err)
		}
	}
}

// TestLifecycleErrors: the bridge's misuse answers are its sentinels.
func TestLifecycleErrors(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := New(Options{PushURL: e.tg.srv.URL}, Deps{}); !errors.Is(err, ErrNoConn) {
		t.Errorf("New without a connection: %v, want ErrNoConn", err)
	}
	b := e.start(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Start(ctx); !errors.Is(err, ErrAlreadyStarted) {
		t.Errorf("second Start: %v, want ErrAlreadyStarted", err)
	}
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Stop: %v, want ErrStopped", err)
	}
}
