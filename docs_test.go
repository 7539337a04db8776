package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeLinks: every relative link of the README and the docs it points
// at names a file of the repository, and every #anchor a heading of its
// file (the README once sent newcomers to a SPEC link that went nowhere).
func TestReadmeLinks(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, doc := range []string{"README.md", "ARCHITECTURE.md", "docs/CONTRACT.md", "deploy/README.md", "bridge/README.md", "gateway/README.md", "docs/NATS.md"} {
		body, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(body), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := doc
			if file != "" {
				path = filepath.Join(filepath.Dir(doc), file)
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s links to %s: %v", doc, target, err)
					continue
				}
			}
			if anchor != "" && strings.HasSuffix(path, ".md") && !hasAnchor(t, path, anchor) {
				t.Errorf("%s links to %s: no such heading", doc, target)
			}
		}
	}
}

// TestReadmeSaysHowToGetTheBinary: the README tells how to get wsbridge
// before its first `wsbridge …` command.
func TestReadmeSaysHowToGetTheBinary(t *testing.T) {
	body, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(body)
	first := regexp.MustCompile("(?m)^wsbridge [a-z]").FindStringIndex(s)
	how := strings.Index(s, "go install github.com/wsbridge/wsbridge")
	build := strings.Index(s, "go build -o wsbridge .")
	if first == nil || how < 0 || build < 0 || how > first[0] || build > first[0] {
		t.Errorf("README: go install at %d, go build at %d, first wsbridge command at %v; want both before it", how, build, first)
	}
}

// hasAnchor reports whether a Markdown file has a heading whose GitHub slug
// is anchor.
func hasAnchor(t *testing.T, path, anchor string) bool {
	t.Helper()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		slug := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")
		if slug == anchor {
			return true
		}
	}
	return false
}
