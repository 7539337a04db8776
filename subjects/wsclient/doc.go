// Package wsclient is the Go client of the wsbridge gateway's resumable
// sessions (gateway/README.md, "Resumable sessions").
//
// A Client keeps one logical connection to the gateway across network drops
// and instance restarts: when its socket ends without a close frame, or the
// gateway closes it with 1001 at shutdown (or 1012-1014, "come back"), it
// reconnects with backoff and full jitter and resumes the session, so the backend sees neither a
// disconnect nor a new connect, every push is read once and in order, and
// every message sent is passed on once.
//
// The gateway's protocol counts data messages implicitly, each direction on
// its own: that is why the client keeps what it sent until the gateway says
// it passed it on (an ack or a resume's welcome), and why it tells the
// gateway how many messages it has received, both to let the gateway drop
// them (acks) and to resume exactly after the last one (received=N).
//
// A session the gateway cannot resume (expired, unknown, slow, lost) is
// reset: the client emits a Reset event and starts a new session, with a new
// connection id and token. What had been sent and not passed on by the old
// session is not sent to the new one, since it was addressed to a
// connection the backend has seen end; the Reset event's *ResetError counts
// them and hands them back. Any other close from the gateway (a close push
// from the backend, a policy close) ends the client: Closed.
//
// Typical use:
//
//	c, err := wsclient.Dial(ctx, "wss://edge.example.com/ws", wsclient.Options{
//		OnEvent: func(ev wsclient.Event) { log.Println("wsclient:", ev) },
//	})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	err = c.Send(ctx, websocket.MessageText, []byte("hello"))
//	m, err := c.Read(ctx)
//
// With Options.NoResume the client speaks the plain protocol (no prefixes,
// no reconnect), for gateways with sessions turned off and for comparison.
package wsclient
