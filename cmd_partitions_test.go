package main

import (
	"strconv"

	"context"
	"encoding/json"
	"github.com/nats-io/nats.go/jetstream"
	"strings"
	"testing"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestPartitionsCommand reads a real stream: the owner from the lease
// bucket, the backlog and lag of the partition holding messages.
func TestPartitionsCommand(t *testing.T) {
	s, js := startTestNATS(t)
	t.Setenv("WSBRIDGE_NATS_URL", s.ClientURL())
	ctx := context.Background()
	n := subjects.MustNew("ws")
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: n.Leases()})
	if err != nil {
		t.Fatal(err)
	}
	tok := subjects.Token("someone")
	p := subjects.Partition(tok, subjects.DefaultPartitions)
	if _, err := kv.Put(ctx, "p."+strconv.Itoa(p), []byte("bridge-a")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := js.Publish(ctx, n.Send(tok), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := runCmd(t, "partitions", "--json")
	if code != 0 {
		t.Fatalf("partitions: exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != subjects.DefaultPartitions {
		t.Fatalf("%d lines, want %d", len(lines), subjects.DefaultPartitions)
	}
	for i, l := range lines {
		var r partitionRow
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		switch {
		case i == p && (r.Owner != "bridge-a" || r.Backlog != 3 || r.LagMS < 0 || r.Error != ""):
			t.Errorf("partition %d: %+v, want owner bridge-a, backlog 3", i, r)
		case i != p && (r.Owner != "" || r.Backlog != 0):
			t.Errorf("partition %d: %+v, want no owner, no backlog", i, r)
		}
	}
	code, stdout, _ = runCmd(t, "partitions")
	if code != 0 || !strings.Contains(stdout, "bridge-a") || !strings.Contains(stdout, "(none)") {
		t.Errorf("table: exit %d\n%s", code, stdout)
	}
}
