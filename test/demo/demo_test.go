package demo

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

const waitTimeout = 10 * time.Second

// startNATS runs an embedded JetStream server with wsbridge's streams.
func startNATS(t *testing.T, names subjects.Names) *nats.Conn {
	t.Helper()
	nc := natstest.Connect(t, natstest.Start(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := subjects.Provision(ctx, js, names, subjects.StreamOptions{}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return nc
}

func inbound(subject, connID string, data []byte, binary bool) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(subjects.HeaderConnID, connID)
	if binary {
		m.Header.Set(subjects.HeaderDataType, subjects.DataBinary)
	}
	return m
}

func next(t *testing.T, sub *nats.Subscription, what string) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(waitTimeout)
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return m
}

func TestBackend(t *testing.T) {
	names := subjects.MustNew("chat")
	nc := startNATS(t, names)
	b, err := NewBackend(nc, names.Prefix(), slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	if err := b.Start(t.Context()); err == nil {
		t.Error("second Start succeeded, want an error")
	}

	out, err := nc.SubscribeSync(names.Outbound())
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	const connID = "q0+/XzB1cw3Hk+ZfZ/b3Ag=="
	token := subjects.Token(connID)

	// connect → welcome
	ev, _ := json.Marshal(subjects.ConnectEvent{ConnectionID: connID, Token: token, ConnectedAt: time.Now()})
	if err := nc.PublishMsg(inbound(names.Connect(token), connID, ev, false)); err != nil {
		t.Fatal(err)
	}
	m := next(t, out, "the welcome")
	if want := names.Send(token); m.Subject != want {
		t.Errorf("welcome on %s, want %s", m.Subject, want)
	}
	if want := `{"type":"welcome","token":"` + token + `","connectionId":"` + connID + `","send":"` + names.Send(token) +
		`","close":"` + names.Close(token) + `","broadcast":"` + names.Broadcast() + `"}`; string(m.Data) != want {
		t.Errorf("welcome %s, want %s", m.Data, want)
	}

	// an undecodable event is skipped, and the service goes on
	if err := nc.Publish(names.Prefix()+".in.message.not!a!token", []byte("x")); err != nil {
		t.Fatal(err)
	}

	// message → echo to the sender, chat to everyone else
	if err := nc.PublishMsg(inbound(names.Message(token), connID, []byte(`hi "there" <b>`), false)); err != nil {
		t.Fatal(err)
	}
	m = next(t, out, "the echo")
	if want := names.Send(token); m.Subject != want {
		t.Errorf("echo on %s, want %s", m.Subject, want)
	}
	if want := `{"type":"echo","text":"hi \"there\" \u003cb\u003e"}`; string(m.Data) != want {
		t.Errorf("echo %s, want %s", m.Data, want)
	}
	m = next(t, out, "the broadcast")
	if want := names.Broadcast(); m.Subject != want {
		t.Errorf("broadcast on %s, want %s", m.Subject, want)
	}
	if got := m.Header.Get(subjects.HeaderExclude); got != token {
		t.Errorf("broadcast %s = %q, want the sender's token %q", subjects.HeaderExclude, got, token)
	}
	var chat Chat
	if err := json.Unmarshal(m.Data, &chat); err != nil || chat != (Chat{Type: "chat", From: token, Text: `hi "there" <b>`}) {
		t.Errorf("broadcast %s (%v), want a chat line from %s", m.Data, err, token)
	}

	// everything went through JetStream, into the outbound stream
	js, _ := jetstream.New(nc)
	st, err := js.Stream(t.Context(), names.StreamOut())
	if err != nil {
		t.Fatal(err)
	}
	// A core subscriber can see a message before the stream has stored
	// it: give the stream a moment to catch up, then count.
	var info *jetstream.StreamInfo
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if info, err = st.Info(t.Context()); err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs >= 3 || time.Now().After(deadline) {
			break
		}
	}
	if info.State.Msgs != 3 {
		t.Errorf("%s holds %d messages, want 3 (welcome, echo, broadcast)", names.StreamOut(), info.State.Msgs)
	}

	// disconnect is only logged
	dev, _ := json.Marshal(subjects.DisconnectEvent{ConnectionID: connID, Token: token, At: time.Now(), Reason: subjects.ReasonClient})
	if err := nc.PublishMsg(inbound(names.Disconnect(token), connID, dev, false)); err != nil {
		t.Fatal(err)
	}

	b.Stop()
	b.Stop() // idempotent
}

func TestNewBackendErrors(t *testing.T) {
	if _, err := NewBackend(nil, "ws", nil); err == nil {
		t.Error("NewBackend(nil conn) succeeded, want an error")
	}
	nc := &nats.Conn{} // never used: the prefix is refused first
	if _, err := NewBackend(nc, "bad prefix", nil); err == nil {
		t.Error(`NewBackend(prefix "bad prefix") succeeded, want an error`)
	}
}

func TestPage(t *testing.T) {
	srv := httptest.NewServer(Page())
	defer srv.Close()
	tests := []struct {
		method, path string
		wantStatus   int
	}{
		{http.MethodGet, "/", 200},
		{http.MethodGet, "/index.html", 200},
		{http.MethodHead, "/", 200},
		{http.MethodPost, "/", 405},
		{http.MethodGet, "/other", 404},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.wantStatus {
			t.Errorf("%s %s: status %d, want %d", tt.method, tt.path, resp.StatusCode, tt.wantStatus)
		}
		if tt.method != http.MethodGet || tt.wantStatus != 200 {
			continue
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("Content-Type %q", ct)
		}
		page := string(body)
		for _, id := range []string{`id="status"`, `id="token"`, `id="input"`, `id="send"`, `id="log"`, `"/ws"`} {
			if !strings.Contains(page, id) {
				t.Errorf("page lacks %s", id)
			}
		}
		for _, ext := range []string{"http://", "https://", "//cdn"} {
			if strings.Contains(page, ext) {
				t.Errorf("page refers to an external asset (%s)", ext)
			}
		}
	}
}
