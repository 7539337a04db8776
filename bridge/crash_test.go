package bridge

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/buildtest"
)

// TestCrashLosesNothing runs the real wsbridge binary, SIGKILLs it in the
// middle of 10,000 messages and restarts it: every message must reach the
// target, and the first delivery of each keeps per-connection order.
//
// The messages are stored before the first bridge starts, and it is killed
// after it took all of them from the stream: messages never delivered to the
// dead bridge would be pushed by the new one while the dead one's wait for the
// ack wait, ahead of them (see the ordering notes in lanes.go).
func TestCrashLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the wsbridge binary")
	}
	bin := buildtest.Binary(buildtest.BuildT(t, "."), ".")

	e := newEnv(t, func(p push, attempt int) (int, int) {
		time.Sleep(time.Millisecond) // keep the run long enough to kill it mid-way
		return http.StatusOK, 0
	})
	const conns, per = 100, 100
	var msgs []*nats.Msg
	for i := 0; i < per; i++ {
		for c := 0; c < conns; c++ {
			msgs = append(msgs, &nats.Msg{Subject: e.names.Send(subjects.Token(fmt.Sprintf("k%d", c))), Data: []byte(strconv.Itoa(i))})
		}
	}
	e.publishAsync(msgs)

	run := func() (*exec.Cmd, *buildtest.SyncBuffer) {
		cmd := exec.Command(bin, "bridge")
		cmd.Env = append(os.Environ(),
			"WSBRIDGE_NATS_URL="+e.s.ClientURL(),
			"WSBRIDGE_PUSH_URL="+e.tg.srv.URL+"/api-secret",
			"WSBRIDGE_HTTP_ADDR=127.0.0.1:0",
			"WSBRIDGE_PUSH_CONCURRENCY=8",
			"WSBRIDGE_LOG_LEVEL=info",
			"WSBRIDGE_LOG_FORMAT=json",
		)
		out := &buildtest.SyncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, out
	}
	first, out1 := run()
	// Kill it once it pushed some: the next one starts from its last
	// committed position.
	waitFor(t, "first bridge to push 2000", 60*time.Second, func() bool { return e.tg.delivered() >= 2000 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	killedAt := e.tg.delivered()
	if killedAt >= conns*per {
		t.Logf("the first bridge pushed everything before it was killed")
	}

	second, out2 := run()
	defer func() {
		if second.ProcessState == nil {
			_ = second.Process.Kill()
			_ = second.Wait()
		}
	}()
	distinct := func() int {
		e.tg.mu.Lock()
		defer e.tg.mu.Unlock()
		seen := map[push]bool{}
		for _, ps := range e.tg.ok {
			for _, p := range ps {
				seen[p] = true
			}
		}
		return len(seen)
	}
	done := false
	deadline := time.Now().Add(120 * time.Second)
	for !done && time.Now().Before(deadline) {
		done = distinct() >= conns*per
		time.Sleep(20 * time.Millisecond)
	}
	if !done {
		t.Fatalf("after restart %d of %d messages arrived\nfirst bridge:\n%s\nsecond bridge:\n%s", distinct(), conns*per, out1, out2)
	}
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Errorf("bridge exit after SIGTERM: %v (want status 0)\n%s", err, out2)
	}
	waitFor(t, "every command resolved", 10*time.Second, e.resolved)

	dups := e.tg.delivered() - conns*per
	// A partition the restarted bridge dropped (a renewal that missed its
	// fence on a loaded machine) is cut off like a crash: its next owner may
	// repeat what was pushed since the last commit, once more.
	windows := 1 + strings.Count(out1.String(), "partition dropped") + strings.Count(out2.String(), "partition dropped")
	t.Logf("killed after %d pushes; %d messages in total, %d duplicates; repeated windows allowed per connection: %d", killedAt, conns*per, dups, windows)
	for c := 0; c < conns; c++ {
		id := fmt.Sprintf("k%d", c)
		seen := map[string]bool{}
		next, ordered := 0, true
		// What the dead bridge pushed after its last commit may come
		// again, in order: one step back per window, then straight on.
		last, backs := -1, 0
		for _, p := range e.tg.of(id) {
			v, _ := strconv.Atoi(p.Data)
			switch {
			case v == last+1:
			case v <= last && backs < windows:
				backs++
			default:
				t.Errorf("%s: message %d after %d (step backs so far %d): not a single repeated window", id, v, last, backs)
				backs = windows + 1
			}
			last = v
			if seen[p.Data] {
				continue
			}
			seen[p.Data] = true
			if ordered && p.Data != strconv.Itoa(next) {
				t.Errorf("%s: first delivery of message %s came after message %d", id, p.Data, next-1)
				ordered = false // report the first break only, but keep counting
			}
			next++
		}
		if (!ordered || backs > 1) && c < 3 || t.Failed() && c == conns-1 {
			t.Logf("pushes of %s: %v\nfirst bridge:\n%s\nsecond bridge:\n%s", id, e.tg.of(id), out1, out2)
		}
		if len(seen) != per {
			t.Errorf("%s: %d distinct messages, want %d (lost %d)", id, len(seen), per, per-len(seen))
		}
	}
}
