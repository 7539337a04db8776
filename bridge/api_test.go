package bridge

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// A conn.list answer stays within the NATS payload limit and says so when it
// left records out.
func TestConnListBoundedBySize(t *testing.T) {
	e := newEnv(t, nil)
	e.start(nil)
	const n = 30
	blob := strings.Repeat("x", 64<<10)
	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, "big-"+string(rune('a'+i%26))+strings.Repeat("z", i/26))
	}
	e.registerEvents(func(ev *subjects.ConnectEvent) {
		ev.State = json.RawMessage(`{"blob":"` + blob + `"}`)
	}, ids...)
	c, err := subjects.NewClient(e.nc, "")
	if err != nil {
		t.Fatal(err)
	}
	// The answer reaches the client only if it fit in a NATS message.
	var r subjects.ConnListReply
	waitFor(t, "all records indexed", 10*time.Second, func() bool {
		if r, err = c.ConnList(context.Background(), subjects.ConnListRequest{}); err != nil {
			t.Fatalf("conn.list: %v", err)
		}
		return r.Total == n
	})
	if !r.Truncated || len(r.Connections) == 0 || len(r.Connections) >= n {
		t.Errorf("conn.list: %d connections of %d, truncated %v; want some but not all, truncated",
			len(r.Connections), r.Total, r.Truncated)
	}
	// A count limit that leaves records out is a truncation too.
	if r, err = c.ConnList(context.Background(), subjects.ConnListRequest{Limit: 2}); err != nil {
		t.Fatal(err)
	}
	if len(r.Connections) != 2 || r.Total != n || !r.Truncated {
		t.Errorf("limit 2: %d connections of %d, truncated %v", len(r.Connections), r.Total, r.Truncated)
	}
}

// A registry read that fails for another reason than a missing key
// fails the request instead of silently shortening the list.
func TestConnListReadErrorFails(t *testing.T) {
	e := newEnv(t, nil)
	b := e.start(nil)
	e.register("listed")
	waitFor(t, "indexed", 10*time.Second, func() bool { return b.idx.size() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out, err := b.apiConnList(ctx, []byte(`{}`))
	if err == nil {
		t.Fatalf("conn.list with a failing registry read answered %+v, want an error", out)
	}
	// A record deleted since the index saw it is skipped, not an error.
	b.idx.put(subjects.Token("ghost"), []byte(`{}`))
	out, err = b.apiConnList(context.Background(), []byte(`{}`))
	if err != nil {
		t.Fatalf("conn.list with a vanished record: %v", err)
	}
	data, _ := json.Marshal(out)
	var r subjects.ConnListReply
	if err := json.Unmarshal(data, &r); err != nil || len(r.Connections) != 1 || r.Connections[0].ConnectionID != "listed" {
		t.Errorf("conn.list = %s (%v), want the one live record", data, err)
	}
}
