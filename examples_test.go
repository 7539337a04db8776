package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestExamplesNameTheirNATS: every `wsbridge bridge` or `wsbridge gateway`
// command with flags in the documentation names its NATS (--nats-url or
// WSBRIDGE_NATS_URL). A bridge run as written without it starts an embedded
// server of its own on 127.0.0.1:4222, beside the real one.
func TestExamplesNameTheirNATS(t *testing.T) {
	docs := []string{"README.md", "gateway/README.md", "deploy/README.md", "docs/NATS.md"}
	for _, doc := range docs {
		body, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		cmds := exampleCommands(string(body))
		if doc != "deploy/README.md" && len(cmds) == 0 {
			t.Fatalf("%s: found no wsbridge bridge or gateway command; the test does not read it", doc)
		}
		for _, c := range cmds {
			if !strings.Contains(c, "--nats-url") && !strings.Contains(c, "WSBRIDGE_NATS_URL") {
				t.Errorf("%s: example names no NATS (--nats-url or WSBRIDGE_NATS_URL): %s", doc, c)
			}
		}
	}
}

var (
	fence      = regexp.MustCompile("(?s)```[a-z]*\n(.*?)```")
	inlineCode = regexp.MustCompile("`([^`]+)`")
	// A command of the bridge or the gateway with flags (not --help).
	serverCmd = regexp.MustCompile(`wsbridge (bridge|gateway) +--[a-z]`)
)

// exampleCommands returns the bridge and gateway commands of a Markdown
// text: the lines of its code blocks (with backslash continuations and the
// variables set before the command on the same line) and its inline code
// spans (which may run over line breaks).
func exampleCommands(md string) []string {
	var cmds []string
	add := func(c string) {
		c = strings.Join(strings.Fields(c), " ")
		if serverCmd.MatchString(c) && !strings.Contains(c, "--help") {
			cmds = append(cmds, c)
		}
	}
	for _, m := range fence.FindAllStringSubmatch(md, -1) {
		var cur strings.Builder
		for _, l := range strings.Split(m[1], "\n") {
			if i := strings.Index(l, " #"); i >= 0 && !strings.Contains(l[:i], "'") {
				l = l[:i] // a trailing comment
			}
			if s, ok := strings.CutSuffix(strings.TrimRight(l, " "), "\\"); ok {
				cur.WriteString(s + " ")
				continue
			}
			cur.WriteString(l)
			add(cur.String())
			cur.Reset()
		}
	}
	prose := fence.ReplaceAllString(md, "")
	for _, m := range inlineCode.FindAllStringSubmatch(prose, -1) {
		add(m[1])
	}
	return cmds
}
