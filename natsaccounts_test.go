package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
	"github.com/wsbridge/wsbridge/test/natstest"
)

// accountsWait bounds each wait of TestNATSAccounts; a safety net, not a
// speed check.
const accountsWait = 60 * time.Second

// wsbridgeProc is a wsbridge command run by a test.
type wsbridgeProc struct {
	out  *buildtest.SyncBuffer
	done chan error
}

// startWsbridge runs bin with args; it is killed when the test ends. lines
// receives what it prints on stdout.
func startWsbridge(t *testing.T, bin string, lines chan<- string, args ...string) *wsbridgeProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	p := &wsbridgeProc{out: &buildtest.SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.out
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			_, _ = p.out.Write([]byte(sc.Text() + "\n"))
			if lines != nil {
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("wsbridge %s output:\n%s", args[0], p.out.String())
		}
	})
	return p
}

// waitOutput waits until p has printed want.
func (p *wsbridgeProc) waitOutput(t *testing.T, what, want string) {
	t.Helper()
	deadline := time.Now().Add(accountsWait)
	for !strings.Contains(p.out.String(), want) {
		select {
		case err := <-p.done:
			t.Fatalf("%s exited (%v) before it printed %q:\n%s", what, err, want, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within %s:\n%s", what, want, accountsWait, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNATSAccounts runs every part of wsbridge with the users and
// permissions of deploy/nats/accounts.conf on a nats-server built from this
// module (the bridge and the gateway as processes, the functions, a backend
// and the operator commands), and wants the whole path to work with no
// permission violation anywhere.
func TestNATSAccounts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nats-server and the wsbridge binary")
	}
	accounts, err := os.ReadFile(filepath.Join("deploy", "nats", "accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	pw := map[string]string{}
	for _, u := range []string{"bridge", "gateway", "functions", "backend", "operator"} {
		pw[u] = u + "-secret"
		t.Setenv("WSBRIDGE_"+strings.ToUpper(u)+"_PASSWORD", pw[u]) // read by nats-server
	}
	srv := natstest.StartProcess(t, buildNATSServer(t),
		fmt.Sprintf("jetstream { store_dir: %q }\n%s", t.TempDir(), accounts))
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")
	as := func(user string) []string {
		return []string{"--nats-url", srv.URL, "--nats-user", user, "--nats-password", pw[user]}
	}
	connect := func(user string) *nats.Conn {
		nc, err := nats.Connect(srv.URL, nats.UserInfo(user, pw[user]))
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}

	const pushToken = "accounts-test-token"
	bridge := startWsbridge(t, bin, nil, append([]string{"bridge", "--push-url", "http://127.0.0.1:1/push",
		"--push-token", pushToken, "--http-addr", ""}, as("bridge")...)...)
	bridge.waitOutput(t, "bridge", "consuming")
	banner := make(chan string, 64)
	gw := startWsbridge(t, bin, banner, append([]string{"gateway", "--addr", "127.0.0.1:0", "--http-addr", "",
		"--push-token", pushToken, "--instance-id", "accounts"}, as("gateway")...)...)
	var wsURL string
	for deadline := time.After(accountsWait); wsURL == ""; {
		select {
		case l := <-banner:
			if f := strings.Fields(l); len(f) == 2 && f[0] == "websocket" {
				wsURL = f[1]
			}
		case err := <-gw.done:
			t.Fatalf("gateway exited: %v\n%s", err, gw.out.String())
		case <-deadline:
			t.Fatalf("gateway printed no websocket address:\n%s", gw.out.String())
		}
	}

	// A backend with a durable consumer on WS_IN that greets every
	// connection and collects what clients send.
	// One bound for the whole run, a hang's: under the race detector
	// beside the rest of the suite, its steps together took over a minute.
	ctx, cancel := context.WithTimeout(context.Background(), 5*accountsWait)
	defer cancel()
	backend, err := subjects.NewClient(connect("backend"), "")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan subjects.Event, 16)
	cc, err := backend.Consume(ctx, "accounts-test", func(ctx context.Context, ev subjects.Event) error {
		if ev.Kind == subjects.KindConnect {
			if err := backend.SendText(ctx, ev.Token, "welcome"); err != nil {
				return err
			}
		}
		got <- ev
		return nil
	})
	if err != nil {
		t.Fatalf("backend consumer on WS_IN: %v", err)
	}
	defer cc.Stop()

	client, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", wsURL, err)
	}
	defer client.CloseNow()
	if _, data, err := client.Read(ctx); err != nil || string(data) != "welcome" {
		t.Fatalf("client read %q, %v; want the backend's welcome through the bridge", data, err)
	}
	if err := client.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	var token string
	for token == "" {
		select {
		case ev := <-got:
			if ev.Kind == subjects.KindMessage && string(ev.Data) == "hello" {
				token = ev.Token
			}
		case <-ctx.Done():
			t.Fatal("the backend never got the client's message")
		}
	}
	list, err := backend.ConnList(ctx, subjects.ConnListRequest{})
	if err != nil || list.Total != 1 {
		t.Errorf("backend's conn.list: %+v, %v; want the one connection", list, err)
	}

	// A send to a connection of this instance that is not there: the
	// gateway answers 404 and the bridge dead-letters it.
	opc := connect("operator")
	dlq, err := opc.SubscribeSync(subjects.MustNew("").DeadLetters())
	if err != nil {
		t.Fatal(err)
	}
	// The subscription is the server's before the send: the dead letter
	// comes within milliseconds.
	if err := opc.Flush(); err != nil {
		t.Fatal(err)
	}
	gone := subjects.Token("accounts~AAAAAAAAAAAAAAAAAAAAAA==")
	if err := backend.SendText(ctx, gone, "nobody"); err != nil {
		t.Fatal(err)
	}
	if m, err := dlq.NextMsg(2 * accountsWait); err != nil || m.Header.Get(subjects.HeaderReason) != "gone" {
		t.Errorf("dead letter of a send to a connection that is not there: %v, %v; want one, reason gone", m, err)
	}

	// The functions on their own credentials, as on SCF.
	fo := functions.DefaultOptions()
	fo.NATS = subjects.ConnOptions{URL: srv.URL, User: "functions", Password: pw["functions"]}
	fns, err := functions.New(fo, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fns.Close()
	const id = "YWNjb3VudHMtdGVzdA=="
	out, err := fns.Register(ctx, json.RawMessage(`{"requestContext":{"requestId":"r1","sourceIp":"10.0.0.1"},"websocket":{"action":"connecting","secConnectionID":"`+id+`"}}`))
	if err != nil || !strings.Contains(string(out), `"errNo":0`) {
		t.Errorf("register as the functions user: %s, %v", out, err)
	}
	if _, err := fns.Transfer(ctx, json.RawMessage(`{"websocket":{"action":"data send","secConnectionID":"`+id+`","dataType":"text","data":"x"}}`)); err != nil {
		t.Errorf("transfer as the functions user: %v", err)
	}
	if _, err := fns.Cleanup(ctx, json.RawMessage(`{"websocket":{"action":"closing","secConnectionID":"`+id+`"}}`)); err != nil {
		t.Errorf("cleanup as the functions user: %v", err)
	}

	// The operator's commands.
	for _, args := range [][]string{
		{"conns"}, {"partitions"}, {"send", token, "from the operator"},
		{"dlq", "list"}, {"dlq", "show", "1"}, {"dlq", "redrive", "--reason", "gone", "--execute"},
	} {
		name := 1
		if args[0] == "dlq" {
			name = 2
		}
		cmd := append(append(append([]string{}, args[:name]...), as("operator")...), args[name:]...)
		code, stdout, stderr := runCmd(t, cmd...)
		if code != 0 {
			t.Errorf("wsbridge %s as the operator: exit %d\n%s%s", args[0], code, stdout, stderr)
		}
	}
	if _, data, err := client.Read(ctx); err != nil || string(data) != "from the operator" {
		t.Errorf("client read %q, %v; want the operator's send", data, err)
	}

	client.Close(websocket.StatusNormalClosure, "")
	for done := false; !done; {
		select {
		case ev := <-got:
			done = ev.Kind == subjects.KindDisconnect && ev.Token == token
		case <-ctx.Done():
			t.Fatal("the backend never got the disconnect")
		}
	}
	for what, out := range map[string]string{"nats-server": srv.Out.String(), "bridge": bridge.out.String(), "gateway": gw.out.String()} {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(strings.ToLower(l), "violation") {
				t.Errorf("%s: %s", what, l)
			}
		}
	}
}
