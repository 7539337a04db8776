package node

import "testing"

// TestWsBridgeJS runs the node:test scripts of this directory (the unit
// tests of wsbridge.js against an in-process server side of the protocol),
// installing their dependency first when node_modules is missing.
func TestWsBridgeJS(t *testing.T) {
	node := Setup(t)
	out := Run(t, Dir(), node, "--test", "--test-reporter=spec")
	t.Logf("node --test:\n%s", out)
}
