package subjects_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/subjects"
)

// apiTimeout bounds each step; a safety net against hangs, not a speed check.
const apiTimeout = 30 * time.Second

// startAPI runs a real bridge on an embedded server and returns a client and
// the registry bucket it serves.
func startAPI(t *testing.T) (*subjects.Client, jetstream.KeyValue) {
	t.Helper()
	s := startNATS(t)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"errNo":0,"errMsg":"ok"}`)
	}))
	t.Cleanup(target.Close)
	b, err := bridge.New(bridge.Options{PushURL: target.URL + "/push"},
		bridge.Deps{Conn: connect(t, s), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop(context.Background()) })
	c, err := subjects.NewClient(connect(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	kv, err := c.JetStream().KeyValue(ctx, c.Names().Bucket())
	if err != nil {
		t.Fatal(err)
	}
	return c, kv
}

func putRecord(t *testing.T, kv jetstream.KeyValue, id, user string) string {
	t.Helper()
	ce := subjects.ConnectEvent{ConnectionID: id, Token: subjects.Token(id), UserID: user}
	data, _ := json.Marshal(ce)
	if _, err := kv.Put(context.Background(), ce.Token, data); err != nil {
		t.Fatal(err)
	}
	return ce.Token
}

func TestClientRegistryAPI(t *testing.T) {
	c, kv := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	var toks []string
	for i := range 3 {
		toks = append(toks, putRecord(t, kv, fmt.Sprintf("conn-%d==", i), "alice"))
	}

	rec, err := c.ConnGet(ctx, toks[0])
	if err != nil || rec.Token != toks[0] || rec.UserID != "alice" {
		t.Errorf("ConnGet(%s) = %+v, %v; want its record", toks[0], rec, err)
	}
	if _, err := c.ConnGet(ctx, subjects.Token("nobody")); !errors.Is(err, subjects.ErrNotFound) {
		t.Errorf("ConnGet of an unknown token: %v, want ErrNotFound", err)
	}
	if _, err := c.ConnGet(ctx, "not a token!"); !errors.Is(err, subjects.ErrBadToken) {
		t.Errorf("ConnGet of a malformed token: %v, want ErrBadToken", err)
	}

	rec, err = c.GroupAdd(ctx, toks[1], "red", "blue")
	if err != nil || !slices.Equal(rec.Groups, []string{"red", "blue"}) {
		t.Errorf("GroupAdd = %+v, %v; want groups red, blue", rec.Groups, err)
	}
	rec, err = c.GroupRemove(ctx, toks[1], "red")
	if err != nil || !slices.Equal(rec.Groups, []string{"blue"}) {
		t.Errorf("GroupRemove = %+v, %v; want group blue", rec.Groups, err)
	}
	if _, err := c.GroupAdd(ctx, subjects.Token("nobody"), "red"); !errors.Is(err, subjects.ErrNotFound) {
		t.Errorf("GroupAdd to an unknown token: %v, want ErrNotFound", err)
	}
	many := make([]string, subjects.MaxGroups)
	for i := range many {
		many[i] = fmt.Sprintf("g%d", i)
	}
	// At the limit with blue already there: one past it, the bridge refuses.
	if _, err := c.GroupAdd(ctx, toks[1], many...); !errors.Is(err, subjects.ErrTooManyGroups) {
		t.Errorf("GroupAdd past MaxGroups: %v, want ErrTooManyGroups", err)
	}
	if _, err := c.GroupAdd(ctx, toks[1], many[:subjects.MaxGroups-1]...); err != nil {
		t.Errorf("GroupAdd up to MaxGroups: %v", err)
	}

	// The index follows the bucket asynchronously.
	var all subjects.ConnListReply
	deadline := time.Now().Add(apiTimeout)
	for all.Total != 3 && time.Now().Before(deadline) {
		if all, err = c.ConnList(ctx, subjects.ConnListRequest{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if all.Total != 3 || len(all.Connections) != 3 || all.Truncated {
		t.Errorf("ConnList = total %d, %d listed, truncated %v; want 3, 3, false", all.Total, len(all.Connections), all.Truncated)
	}
	two, err := c.ConnList(ctx, subjects.ConnListRequest{Limit: 2})
	if err != nil || two.Total != 3 || len(two.Connections) != 2 || !two.Truncated {
		t.Errorf("ConnList limit 2 = total %d, %d listed, truncated %v, %v; want 3, 2, true", two.Total, len(two.Connections), two.Truncated, err)
	}
}

func TestClientRegistryAPINoBridge(t *testing.T) {
	s := startNATS(t)
	c, err := subjects.NewClient(connect(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	// No deadline: the client bounds the request itself.
	if _, err := c.ConnList(context.Background(), subjects.ConnListRequest{}); !errors.Is(err, subjects.ErrNoBridge) {
		t.Errorf("ConnList with no bridge: %v, want ErrNoBridge", err)
	}
}

func TestRemoteErrorIs(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want error
	}{
		{subjects.ErrNotFound.Error(), subjects.ErrNotFound},
		{subjects.ErrTooManyGroups.Error() + ": the connection would be in 65 groups", subjects.ErrTooManyGroups},
	} {
		err := &subjects.RemoteError{Subject: "ws.api.x", Message: tc.msg}
		if !errors.Is(err, tc.want) {
			t.Errorf("errors.Is(%v, %v) = false", err, tc.want)
		}
	}
	if err := (&subjects.RemoteError{Message: "bad request"}); errors.Is(err, subjects.ErrNotFound) || errors.Is(err, subjects.ErrTooManyGroups) {
		t.Errorf("%v matches a sentinel it does not stand for", err)
	}
}
