package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/netcut"
	"github.com/wsbridge/wsbridge/test/stack"
)

// TestDemoPageResumesAfterCut: the demo page in headless Chromium keeps its
// session (wsbridge.js, served by the gateway) through three network cuts:
// the page is loaded through a TCP balancer that drops its WebSocket with
// no close frame while pushes flow. Every push shows once and in order, the
// token stays, the backend sees no disconnect, and a line typed after the
// last cut reaches it once.
func TestDemoPageResumesAfterCut(t *testing.T) {
	t.Parallel()
	browserURL := startChromium(t)
	st := startStack(t, func(o *stack.Options) { o.Demo = true })
	svc := newService(t, st)
	rec := svc.record(t)
	lb := netcut.New(t, strings.TrimSuffix(strings.TrimPrefix(st.URL(), "http://"), "/"))
	page := openPage(t, browserURL)
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	pageURL := "http://" + lb.Addr() + "/"
	page.call(t, "Page.navigate", map[string]any{"url": pageURL}, &nav)
	if nav.ErrorText != "" {
		t.Fatalf("navigate to %s: %s", pageURL, nav.ErrorText)
	}
	token := waitEval(t, page, "#token to show the session's token", `document.getElementById("token").textContent`,
		func(s string) bool { return s != "" && s != "–" })
	rec.wait(t, "the page's connect event", isKind(subjects.KindConnect, token))
	logTexts := `Array.from(document.querySelectorAll("#log li.CLASS")).map(li => li.lastChild.textContent)`
	natsLines := strings.Replace(logTexts, "CLASS", "nats", 1)
	const rounds, per = 3, 20
	for round := 1; round <= rounds; round++ {
		for i := range per / 2 {
			if err := svc.c.Send(svc.ctx(t), token, fmt.Appendf(nil, "r%d-%02d", round, i)); err != nil {
				t.Fatal(err)
			}
		}
		if n := lb.Cut(); n == 0 {
			t.Fatalf("round %d: the balancer carried no connection to cut", round)
		}
		for i := per / 2; i < per; i++ {
			if err := svc.c.Send(svc.ctx(t), token, fmt.Appendf(nil, "r%d-%02d", round, i)); err != nil {
				t.Fatal(err)
			}
		}
		waitEval(t, page, fmt.Sprintf("resume %d", round), strings.Replace(logTexts, "CLASS", "resumed", 1),
			func(v []string) bool { return len(v) >= round })
		waitEval(t, page, fmt.Sprintf("%d pushes", per*round), natsLines, func(v []string) bool { return len(v) >= per*round })
	}
	got := waitEval(t, page, "every push", natsLines, func(v []string) bool { return len(v) == rounds*per })
	var want []string
	for round := 1; round <= rounds; round++ {
		for i := range per {
			want = append(want, fmt.Sprintf("r%d-%02d", round, i))
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pushes in the page:\n%v\nwant each once, in order:\n%v", got, want)
	}
	if tok := waitEval(t, page, "#token", `document.getElementById("token").textContent`, func(string) bool { return true }); tok != token {
		t.Errorf("#token %q after the cuts, want %q (the same session)", tok, token)
	}
	var ok bool
	if err := page.eval(`(() => { document.getElementById("input").value = "typed after the cuts"; document.getElementById("send").click(); return true })()`, &ok); err != nil {
		t.Fatal(err)
	}
	ev := rec.wait(t, "the typed line", isKind(subjects.KindMessage, token))
	if string(ev.Data) != "typed after the cuts" {
		t.Errorf("the backend got %q", ev.Data)
	}
	if d := rec.find(isKind(subjects.KindDisconnect, token)); len(d) != 0 {
		t.Errorf("disconnect events %v for a session that resumed", d)
	}
	if c := rec.find(isKind(subjects.KindConnect, "")); len(c) != 1 {
		t.Errorf("%d connect events, want 1", len(c))
	}
}
