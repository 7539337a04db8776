package wsclient_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/subjects/wsclient"
)

// Dial starts a session; Send and Read go on across drops (Drop plays a
// network change here) and resumes; Close ends the session.
func Example() {
	// A stand-in for the gateway that echoes each message (server_test.go);
	// in production the URL is the gateway's, say wss://edge.example.com/ws.
	gw := startFakeGateway()
	defer gw.Close()
	url := gw.URL("")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resumed := make(chan struct{}, 1)
	c, err := wsclient.Dial(ctx, url, wsclient.Options{
		OnEvent: func(ev wsclient.Event) {
			if ev.Kind == wsclient.Resumed {
				resumed <- struct{}{}
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if err := c.Send(ctx, websocket.MessageText, []byte("hello")); err != nil {
		log.Fatal(err)
	}
	m, err := c.Read(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(m.Data))

	c.Drop() // the network goes away; the client resumes the session
	<-resumed
	if err := c.Send(ctx, websocket.MessageText, []byte("still here")); err != nil {
		log.Fatal(err)
	}
	if m, err = c.Read(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(m.Data))
	fmt.Println("resumes:", c.Stats().Resumes)
	// Output:
	// echo: hello
	// echo: still here
	// resumes: 1
}
