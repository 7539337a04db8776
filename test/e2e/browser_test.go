//go:build unix

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/stack"
)

// chromiumPath finds the browser test/run.sh installs.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("WSBRIDGE_E2E_SKIP_BROWSER") == "1" {
		t.Skip("chromium not found and WSBRIDGE_E2E_SKIP_BROWSER=1")
	}
	t.Fatal("chromium not found (/usr/bin/chromium or on PATH): run test/run.sh, which installs it, " +
		"or set WSBRIDGE_E2E_SKIP_BROWSER=1 to skip the browser test")
	return ""
}

// startChromium runs headless Chromium with remote debugging on a free port
// and returns its DevTools browser URL. The browser is killed (its whole
// process group: /usr/bin/chromium is a wrapper script) when the test ends.
func startChromium(t *testing.T) string {
	t.Helper()
	path := chromiumPath(t)
	profile, err := os.MkdirTemp("", "wsbridge-e2e-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--disable-dev-shm-usage", "--user-data-dir="+profile,
		"--remote-debugging-port=0", "about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	exited := make(chan struct{})
	var tail tailBuffer
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			tail.add(line)
			if rest, ok := strings.CutPrefix(line, "DevTools listening on "); ok {
				select {
				case found <- strings.TrimSpace(rest):
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(waitTimeout):
			t.Errorf("chromium (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
		}
		// Children that outlive the group kill by a moment may still write
		// into the profile; its removal is best effort.
		for range 20 {
			if os.RemoveAll(profile) == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	select {
	case u := <-found:
		return u
	case <-exited:
		t.Fatalf("chromium exited before listening for DevTools; its stderr ended with:\n%s", tail.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("chromium did not print its DevTools address within 30s; its stderr ended with:\n%s", tail.String())
	}
	return ""
}

// tailBuffer keeps the last lines of a process's output for error messages.
type tailBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *tailBuffer) add(line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, line)
	if len(b.lines) > 30 {
		b.lines = b.lines[len(b.lines)-30:]
	}
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

// cdp is a minimal Chrome DevTools Protocol client: numbered calls over one
// WebSocket, events ignored.
type cdp struct {
	ws      *websocket.Conn
	nextID  atomic.Int64
	mu      sync.Mutex
	pending map[int64]chan cdpReply
	done    chan struct{}
	err     error
}

type cdpReply struct {
	ID     int64           `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func dialCDP(t *testing.T, wsURL string) *cdp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("dial DevTools %s: %v", wsURL, err)
	}
	ws.SetReadLimit(64 << 20)
	c := &cdp{ws: ws, pending: map[int64]chan cdpReply{}, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			var r cdpReply
			if json.Unmarshal(data, &r) != nil || r.ID == 0 {
				continue // an event
			}
			c.mu.Lock()
			ch := c.pending[r.ID]
			delete(c.pending, r.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- r
			}
		}
	}()
	t.Cleanup(func() {
		_ = ws.CloseNow()
		<-c.done
	})
	return c
}

// call invokes method and decodes its result into out (when not nil).
func (c *cdp) call(t *testing.T, method string, params, out any) {
	t.Helper()
	if err := c.try(method, params, out); err != nil {
		t.Fatal(err)
	}
}

func (c *cdp) try(method string, params, out any) error {
	id := c.nextID.Add(1)
	ch := make(chan cdpReply, 1)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	req, err := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, req); err != nil {
		return fmt.Errorf("CDP %s: %w", method, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return fmt.Errorf("CDP %s: error %d %s", method, r.Error.Code, r.Error.Message)
		}
		if out != nil {
			if err := json.Unmarshal(r.Result, out); err != nil {
				return fmt.Errorf("CDP %s: result %s: %w", method, r.Result, err)
			}
		}
		return nil
	case <-c.done:
		return fmt.Errorf("CDP %s: connection ended: %v", method, c.err)
	case <-ctx.Done():
		return fmt.Errorf("CDP %s: no answer within %v", method, waitTimeout)
	}
}

// eval evaluates a JavaScript expression in the page and decodes its value.
func (c *cdp) eval(expr string, out any) error {
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := c.try("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res); err != nil {
		return err
	}
	if e := res.ExceptionDetails; e != nil {
		return fmt.Errorf("evaluate %q: %s %s", expr, e.Text, e.Exception.Description)
	}
	if len(res.Result.Value) == 0 {
		return fmt.Errorf("evaluate %q: no value", expr)
	}
	return json.Unmarshal(res.Result.Value, out)
}

// waitEval polls a JavaScript expression until cond accepts its value.
func waitEval[T any](t *testing.T, c *cdp, what, expr string, cond func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var v T
	var err error
	for {
		var got T
		if err = c.eval(expr, &got); err == nil {
			v = got
			if cond(got) {
				return got
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s: last value %v, error %v", waitTimeout, what, v, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// openPage opens a new tab through the browser's DevTools endpoint and
// returns a CDP client for it.
func openPage(t *testing.T, browserURL string) *cdp {
	t.Helper()
	browser := dialCDP(t, browserURL)
	var target struct {
		TargetID string `json:"targetId"`
	}
	browser.call(t, "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	u, err := url.Parse(browserURL)
	if err != nil {
		t.Fatalf("DevTools URL %q: %v", browserURL, err)
	}
	return dialCDP(t, "ws://"+u.Host+"/devtools/page/"+target.TargetID)
}

// TestDemoPageInBrowser loads the demo chat page in headless Chromium,
// waits for it to connect, sends a line through the form and sees the demo
// backend's echo, then sees a broadcast published from Go.
func TestDemoPageInBrowser(t *testing.T) {
	t.Parallel()
	browserURL := startChromium(t)
	st := startStack(t, func(o *stack.Options) { o.Demo = true })
	svc := newService(t, st)
	rec := svc.record(t)
	page := openPage(t, browserURL)

	var nav struct {
		ErrorText string `json:"errorText"`
	}
	page.call(t, "Page.navigate", map[string]any{"url": st.URL()}, &nav)
	if nav.ErrorText != "" {
		t.Fatalf("navigate to %s: %s", st.URL(), nav.ErrorText)
	}
	waitEval(t, page, "#status data-state open", `document.getElementById("status").dataset.state`,
		func(s string) bool { return s == "open" })

	token := waitEval(t, page, "#token to show the welcome's token", `document.getElementById("token").textContent`,
		func(s string) bool { return s != "" && s != "–" })
	id, err := subjects.ConnID(token)
	if err != nil {
		t.Fatalf("#token %q is not a connection token: %v", token, err)
	}
	if subjects.Token(id) != token {
		t.Errorf("#token %q does not round-trip through its connection id %q", token, id)
	}
	waitFor(t, fmt.Sprintf("#token %q (connection %q) among the gateway's connections", token, id), func() bool {
		return slices.Contains(st.Gateway.ConnectionIDs(), id)
	})
	rec.wait(t, "the page's connect event", isKind(subjects.KindConnect, token))
	if !svc.registered(t, token) {
		t.Errorf("registry has no record of the page's %s", token)
	}

	const line = "hello from chromium"
	var clicked bool
	if err := page.eval(`(() => {
		const input = document.getElementById("input");
		input.value = `+jsString(line)+`;
		document.getElementById("send").click();
		return true;
	})()`, &clicked); err != nil || !clicked {
		t.Fatalf("fill #input and click #send: %v", err)
	}
	ev := rec.wait(t, "the page's message on P.in.message", isKind(subjects.KindMessage, token))
	if string(ev.Data) != line || ev.Binary {
		t.Errorf("P.in.message from the page: %q (binary %v), want text %q", ev.Data, ev.Binary, line)
	}
	logTexts := `Array.from(document.querySelectorAll("#log li.CLASS")).map(li => li.lastChild.textContent)`
	waitEval(t, page, "the echo in #log", strings.Replace(logTexts, "CLASS", "echo", 1),
		func(v []string) bool { return slices.Contains(v, line) })

	svc.waitListed(t, subjects.ConnListRequest{}, 1)
	chat, _ := json.Marshal(map[string]string{"type": "chat", "from": "go-test", "text": "broadcast from Go"})
	if err := svc.c.Broadcast(svc.ctx(t), chat); err != nil {
		t.Fatal(err)
	}
	if err := svc.c.Broadcast(svc.ctx(t), []byte("plain broadcast")); err != nil {
		t.Fatal(err)
	}
	waitEval(t, page, "the chat broadcast in #log", strings.Replace(logTexts, "CLASS", "chat", 1),
		func(v []string) bool { return slices.Contains(v, "broadcast from Go") })
	// Lines that are not the demo's chat protocol came from NATS and are marked so.
	natsLines := `Array.from(document.querySelectorAll("#log li.nats")).map(li => li.textContent)`
	waitEval(t, page, "the plain broadcast marked as from NATS in #log", natsLines,
		func(v []string) bool { return slices.Contains(v, "natsplain broadcast") })

	// A binary frame shows as its size and a hex preview, not as mangled text.
	if err := svc.c.SendBinary(svc.ctx(t), token, []byte{0x00, 0x01, 0xfe, 0xff}); err != nil {
		t.Fatal(err)
	}
	waitEval(t, page, "the binary frame as <4 bytes binary> 00 01 fe ff", natsLines,
		func(v []string) bool { return slices.Contains(v, "nats<4 bytes binary>00 01 fe ff") })

	checkNATSLines(t, page, st, token, natsLines)
	checkCopyToken(t, page, token)

	// Closing from the backend shows in the page; the page reconnects
	// without a reload and gets a new connection.
	if err := svc.c.Close(svc.ctx(t), token); err != nil {
		t.Fatal(err)
	}
	waitEval(t, page, "#status data-state closed", `document.getElementById("status").dataset.state`,
		func(s string) bool { return s == "closed" })
	var clicked2 bool
	if err := page.eval(`(() => { const b = document.getElementById("reconnect"); if (b.disabled) return false; b.click(); return true; })()`, &clicked2); err != nil || !clicked2 {
		t.Fatalf("click #reconnect (enabled once closed): %v %v", clicked2, err)
	}
	waitEval(t, page, "#status data-state open after reconnecting", `document.getElementById("status").dataset.state`,
		func(s string) bool { return s == "open" })
	again := waitEval(t, page, "a new token after reconnecting", `document.getElementById("token").textContent`,
		func(s string) bool { return s != "" && s != "–" && s != token })
	rec.wait(t, "the reconnected page's connect event", isKind(subjects.KindConnect, again))
	var navs int
	if err := page.eval(`performance.getEntriesByType("navigation").length`, &navs); err != nil || navs != 1 {
		t.Errorf("navigations %d (%v), want 1: reconnecting must not reload the page", navs, err)
	}
}

// checkNATSLines runs the page's nats CLI lines for its connection (text
// and binary send) with the real CLI and sees both arrive in the page.
func checkNATSLines(t *testing.T, page *cdp, st *stack.Stack, token string, natsLines string) {
	t.Helper()
	cmds := waitEval(t, page, "#natscmds to show the lines for this connection", `document.getElementById("natscmds").textContent`,
		func(s string) bool { return strings.Contains(s, token) })
	lines := strings.Split(cmds, "\n")
	n := subjects.MustNew(subjects.DefaultPrefix) // startStack keeps the default prefix
	want := []string{
		"nats pub " + n.Send(token) + " 'hi from NATS'",
		"nats pub " + n.Send(token) + " -H Ws-Data-Type:binary 'some bytes'",
		"nats pub " + n.Broadcast() + " 'hello, all'",
		"nats pub " + n.Close(token) + " ''",
	}
	if !slices.Equal(lines, want) {
		t.Fatalf("#natscmds:\n%s\nwant:\n%s", cmds, strings.Join(want, "\n"))
	}
	bin, cfg := natsCLI(t), t.TempDir()
	for _, l := range lines[:2] {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		// The line as a user pastes it into a shell, against this stack's NATS.
		cmd := exec.CommandContext(ctx, "bash", "-c", l)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"), "NATS_URL="+st.NATSURL(),
			"XDG_CONFIG_HOME="+cfg, "HOME="+cfg, "NATS_CONTEXT=")
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s: %v\n%s", l, err, out)
		}
	}
	waitEval(t, page, "the nats pub text line in #log", natsLines,
		func(v []string) bool { return slices.Contains(v, "natshi from NATS") })
	waitEval(t, page, "the nats pub binary line in #log", natsLines,
		func(v []string) bool { return slices.Contains(v, "nats<10 bytes binary>73 6f 6d 65 20 62 79 74 65 73") })
}

// checkCopyToken clicks the copy button and reads the clipboard back.
func checkCopyToken(t *testing.T, page *cdp, token string) {
	t.Helper()
	page.call(t, "Emulation.setFocusEmulationEnabled", map[string]any{"enabled": true}, nil)
	page.call(t, "Browser.grantPermissions", map[string]any{"permissions": []string{"clipboardReadWrite", "clipboardSanitizedWrite"}}, nil)
	var clicked bool
	if err := page.eval(`(() => { document.getElementById("copy").click(); return true; })()`, &clicked); err != nil || !clicked {
		t.Fatalf("click #copy: %v", err)
	}
	waitEval(t, page, "#copy to report the token copied", `document.getElementById("copy").dataset.copied || ""`,
		func(s string) bool { return s == token })
	var res struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
	}
	page.call(t, "Runtime.evaluate", map[string]any{"expression": "navigator.clipboard.readText()", "awaitPromise": true, "returnByValue": true}, &res)
	if res.Result.Value != token {
		t.Errorf("clipboard holds %q after #copy, want the token %q", res.Result.Value, token)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(errors.New("jsString: " + err.Error()))
	}
	return string(b)
}
