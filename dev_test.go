package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// TestDevCommand runs `wsbridge dev` in process on free ports, talks to the
// demo backend through a real WebSocket client, and stops it as SIGINT would.
func TestDevCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"dev", "--nats-listen", "127.0.0.1:0", "--addr", "127.0.0.1:0",
			"--http-addr", "127.0.0.1:0", "--log-level", "warn"}, pw, io.Discard)
		pw.Close()
	}()
	urls := map[string]string{}
	sc := bufio.NewScanner(pr)
	for sc.Scan() && len(urls) < 3 {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && (f[0] == "websocket" || f[0] == "metrics" || f[0] == "nats") {
			urls[f[0]] = f[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if urls["websocket"] == "" {
		t.Fatalf("dev printed no websocket URL (got %v)", urls)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	c, _, err := websocket.Dial(wctx, urls["websocket"], nil)
	if err != nil {
		t.Fatalf("dial %s: %v", urls["websocket"], err)
	}
	defer c.CloseNow()
	read := func() map[string]any {
		t.Helper()
		_, b, err := c.Read(wctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("demo sent %q: %v", b, err)
		}
		return m
	}
	welcome := read()
	tok, _ := welcome["token"].(string)
	if welcome["type"] != "welcome" {
		t.Fatalf("first message %v, want a welcome", welcome)
	}
	if _, err := subjects.ConnID(tok); err != nil {
		t.Fatalf("welcome token %q: %v", tok, err)
	}
	if err := c.Write(wctx, websocket.MessageText, []byte("hi there")); err != nil {
		t.Fatal(err)
	}
	if echo := read(); echo["type"] != "echo" || echo["text"] != "hi there" {
		t.Fatalf("got %v, want the echo of %q", echo, "hi there")
	}
	c.Close(websocket.StatusNormalClosure, "bye")
	cancel()
	select {
	case got := <-code:
		if got != 0 {
			t.Fatalf("dev exited %d after interrupt, want 0", got)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("dev did not stop within 60s of the interrupt")
	}
}

// TestGatewayCommand runs `wsbridge gateway` alone against a NATS server:
// a client's frame reaches NATS through the in-process functions, and a POST
// to the printed reverse-push address reaches the client.
func TestGatewayCommand(t *testing.T) {
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	msgs := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe("ws.in.message.*", msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"gateway", "--nats-url", s.ClientURL(), "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "warn"}, pw, io.Discard)
		pw.Close()
	}()
	urls := map[string]string{}
	sc := bufio.NewScanner(pr)
	for sc.Scan() && len(urls) < 2 {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "reverse" {
			urls["push"] = f[2]
		} else if len(f) >= 2 && f[0] == "websocket" {
			urls["ws"] = f[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if urls["ws"] == "" || urls["push"] == "" {
		t.Fatalf("gateway printed %v, want websocket and reverse push URLs", urls)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	c, _, err := websocket.Dial(wctx, urls["ws"], nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.CloseNow()
	if err := c.Write(wctx, websocket.MessageText, []byte("over the emulator")); err != nil {
		t.Fatal(err)
	}
	var m *nats.Msg
	select {
	case m = <-msgs:
	case <-wctx.Done():
		t.Fatal("no ws.in.message event")
	}
	if string(m.Data) != "over the emulator" {
		t.Fatalf("event data %q", m.Data)
	}
	id := m.Header.Get(subjects.HeaderConnID)
	body, _ := json.Marshal(subjects.PushBody{WebSocket: subjects.GatewayWebSocket{
		Action: subjects.ActionDataSend, SecConnectionID: id, DataType: subjects.DataText, Data: "pushed"}})
	resp, err := http.Post(urls["push"], "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(answer) != `{"errNo":0,"errMsg":"ok"}` {
		t.Fatalf("push answered %d %s", resp.StatusCode, answer)
	}
	if _, got, err := c.Read(wctx); err != nil || string(got) != "pushed" {
		t.Fatalf("client read %q, %v; want the push", got, err)
	}
	c.Close(websocket.StatusNormalClosure, "bye")
	cancel()
	select {
	case got := <-code:
		if got != 0 {
			t.Fatalf("gateway exited %d, want 0", got)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("gateway did not stop")
	}
}

// TestGatewayCommandChecksAddresses: an address in use fails at once, before
// NATS is even dialled, naming the address and its flag; so does a push
// address bridges cannot be told.
func TestGatewayCommandChecksAddresses(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	// Nobody listens at this NATS URL: the command must fail on the
	// address before it tries.
	base := []string{"gateway", "--nats-url", "nats://127.0.0.1:1", "--addr", "127.0.0.1:0", "--push-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}
	for _, flag := range []string{"--addr", "--push-addr", "--http-addr"} {
		code, _, stderr := runCmd(t, append(base, flag, busy.Addr().String())...)
		if code != 1 || !strings.Contains(stderr, flag+" "+busy.Addr().String()+": address already in use") || !strings.Contains(stderr, flag+" or "+envName(strings.TrimPrefix(flag, "--"))) {
			t.Errorf("%s in use: exit %d, stderr %q; want a failure naming it", flag, code, stderr)
		}
	}
	code, _, stderr := runCmd(t, append(base, "--push-addr", "0.0.0.0:0")...)
	if code != 2 || !strings.Contains(stderr, "--push-url is required") {
		t.Errorf("push address on every interface without --push-url: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCmd(t, append(base, "--instance-id", "a b")...)
	if code != 2 || !strings.Contains(stderr, "--instance-id") {
		t.Errorf("bad instance id: exit %d, stderr %q", code, stderr)
	}
}
