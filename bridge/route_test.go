package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// TestRouter: an id naming a live edge instance goes to the URL it
// advertises, one naming a dead instance is gone (announced lost), any other
// to the push URL, or nowhere without one; every push carries the token.
func TestRouter(t *testing.T) {
	s := startNATS(t)
	js, err := jetstream.New(connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	names := subjects.MustNew("ws")
	ctx := context.Background()

	var auth []string
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = append(auth, r.Header.Get("Authorization"))
		_, _ = w.Write(okAnswer)
	}))
	defer edge.Close()
	fallback, _ := url.Parse("http://apigw.example/api-x")

	// Before any edge instance ran there is no bucket: the instance is dead.
	r := newRouter(js, names, fallback)
	dead := subjects.Token(subjects.NewEdgeConnID("edge-a"))
	if _, o := r.resolve(ctx, dead); o == nil || o.Class != Gone || disconnectReason(*o) != subjects.ReasonLost {
		t.Fatalf("edge id without a bucket: %+v, want gone (lost)", o)
	}

	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: names.GatewayBucket(), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(subjects.Instance{ID: "edge-a", PushURL: edge.URL + "/push"})
	if _, err := kv.Put(ctx, "edge-a", rec); err != nil {
		t.Fatal(err)
	}
	r = newRouter(js, names, fallback)
	live := subjects.Token(subjects.NewEdgeConnID("edge-a"))
	u, o := r.resolve(ctx, live)
	if o != nil || u.String() != edge.URL+"/push" {
		t.Fatalf("live instance: %v, %+v; want %s/push", u, o, edge.URL)
	}
	if u, o := r.resolve(ctx, subjects.Token("L5bZ4yiH7c2a+/==")); o != nil || u != fallback {
		t.Errorf("API Gateway id: %v, %+v; want the push URL", u, o)
	}
	if _, o := r.resolve(ctx, subjects.Token(subjects.NewEdgeConnID("edge-b"))); o == nil || !errors.Is(o.Err, errInstanceLost) {
		t.Errorf("unknown instance: %+v, want gone (lost)", o)
	}
	if _, o := newRouter(js, names, nil).resolve(ctx, subjects.Token("L5bZ4yiH7c2a+/==")); o == nil || o.Class != Permanent {
		t.Errorf("API Gateway id without a push URL: %+v, want permanent", o)
	}

	p, err := newPusher(http.DefaultClient, "", "tok")
	if err != nil {
		t.Fatal(err)
	}
	if o := p.push(ctx, u, []byte(`{}`), nil, 0); o.Class != OK {
		t.Fatalf("push: %+v", o)
	}
	if len(auth) != 1 || auth[0] != "Bearer tok" {
		t.Errorf("Authorization %q, want Bearer tok", auth)
	}

	// Its record gone, the instance is dead once the cached route expires.
	if err := kv.Delete(ctx, "edge-a"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.routes["edge-a"] = route{u: u, fetched: time.Now().Add(-routeCacheTTL)}
	r.mu.Unlock()
	if _, o := r.resolve(ctx, live); o == nil || o.Class != Gone {
		t.Errorf("instance whose record is gone: %+v, want gone", o)
	}
}
