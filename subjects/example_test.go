package subjects_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// exampleServer starts a throw-away JetStream server so the examples run
// as they are; a real service connects to its NATS_URL instead.
func exampleServer() (*server.Server, func()) {
	dir, _ := os.MkdirTemp("", "wsbridge-example")
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	s.Start()
	s.ReadyForConnections(10 * time.Second)
	return s, func() { s.Shutdown(); os.RemoveAll(dir) }
}

// An echo service: every message a WebSocket client sends comes back to it,
// and everyone else hears about it.
func Example() {
	s, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	nc, _ := nats.Connect(s.ClientURL())
	defer nc.Close()
	c, _ := subjects.NewClient(nc, subjects.DefaultPrefix)
	_ = subjects.Provision(ctx, c.JetStream(), c.Names(), subjects.StreamOptions{}) // the bridge does this at start

	done := make(chan struct{})
	sub, _ := c.Subscribe(func(ev subjects.Event) {
		if ev.Kind != subjects.KindMessage {
			return
		}
		_ = c.SendText(ctx, ev.Token, "echo: "+string(ev.Data))
		_ = c.Broadcast(ctx, ev.Data, subjects.Exclude(ev.Token))
		close(done)
	})
	defer sub.Unsubscribe()

	// What the transfer function publishes when a client sends "hello".
	tok := subjects.Token("kGcK4x/+Vf1e7aT3Nd2u1A==")
	_, _ = c.JetStream().Publish(ctx, c.Names().Message(tok), []byte("hello"))
	<-done

	// What the bridge will push.
	st, _ := c.JetStream().Stream(ctx, c.Names().StreamOut())
	for seq := uint64(1); seq <= 2; seq++ {
		m, _ := st.GetMsg(ctx, seq)
		stored, _ := c.Names().ParseStored(m.Subject) // stored per partition, published as Original
		fmt.Printf("%s %q exclude=%q\n", stored.Original, m.Data, m.Header.Get(subjects.HeaderExclude))
	}
	// Output:
	// ws.out.send.a0djSzR4LytWZjFlN2FUM05kMnUxQT09 "echo: hello" exclude=""
	// ws.out.broadcast "hello" exclude="a0djSzR4LytWZjFlN2FUM05kMnUxQT09"
}

// A durable consumer sees events published while the service was down.
func ExampleClient_Consume() {
	s, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	nc, _ := nats.Connect(s.ClientURL())
	defer nc.Close()
	c, _ := subjects.NewClient(nc, "")
	_ = subjects.Provision(ctx, c.JetStream(), c.Names(), subjects.StreamOptions{})

	events := make(chan subjects.Event, 1)
	cc, _ := c.Consume(ctx, "audit", func(_ context.Context, ev subjects.Event) error {
		events <- ev
		return nil // nil acks; an error would redeliver
	})
	defer cc.Stop()

	tok := subjects.Token("conn-1")
	_, _ = c.JetStream().Publish(ctx, c.Names().Disconnect(tok), []byte(`{"connectionId":"conn-1","reason":"client"}`))
	ev := <-events
	fmt.Println(ev.Kind, ev.ConnectionID, ev.Disconnect.Reason)
	// Output: disconnect conn-1 client
}

func ExampleToken() {
	id := "kGcK4x/+Vf1e7aT3Nd2u1A==" // a gateway secConnectionID
	tok := subjects.Token(id)
	back, _ := subjects.ConnID(tok)
	fmt.Println(tok, back == id)
	fmt.Println(subjects.MustNew("ws").Send(tok))
	// Output:
	// a0djSzR4LytWZjFlN2FUM05kMnUxQT09 true
	// ws.out.send.a0djSzR4LytWZjFlN2FUM05kMnUxQT09
}
