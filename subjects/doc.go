// Package subjects is the wsbridge contract: the connection-token codec, every
// NATS subject name, header name and event payload, the stream and bucket
// names derived from a prefix, the wire format of the Tencent API Gateway
// WebSocket events, and the Go API a business service uses to talk to
// WebSocket clients.
//
// Nothing else in wsbridge concatenates subjects: every subject is built and
// parsed here, so the contract lives in one place.
//
// A business service needs only a NATS connection:
//
//	nc, _ := nats.Connect(nats.DefaultURL)
//	c, _ := subjects.NewClient(nc, subjects.DefaultPrefix)
//	sub, _ := c.Subscribe(func(ev subjects.Event) {
//		if ev.Kind == subjects.KindMessage {
//			_ = c.SendText(context.Background(), ev.Token, "echo: "+string(ev.Data))
//		}
//	})
//	defer sub.Unsubscribe()
package subjects
