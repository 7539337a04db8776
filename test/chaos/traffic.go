package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// authResponder is the backend that authorizes connections (the edges run
// with --auth required): it gives each connection its client's user and
// groups, and learns its token, which is how a client knows its own.
type authResponder struct {
	r   *Runner
	sub *nats.Subscription

	mu     sync.Mutex
	tokens map[string]string // "c<client>.<life>" -> token
}

const protocolPrefix = "chaos."

func startAuth(r *Runner) (*authResponder, error) {
	a := &authResponder{r: r, tokens: map[string]string{}}
	sub, err := r.nc.QueueSubscribe(r.names.AuthConnect(), "chaos-auth", a.handle)
	if err != nil {
		return nil, fmt.Errorf("auth responder: %w", err)
	}
	a.sub = sub
	return a, r.nc.Flush()
}

func (a *authResponder) handle(m *nats.Msg) {
	var ce subjects.ConnectEvent
	reply := subjects.AuthReply{Allow: false, ErrNo: 403, ErrMsg: "not a chaos client"}
	if err := json.Unmarshal(m.Data, &ce); err == nil {
		for _, p := range ce.Protocols {
			key, ok := strings.CutPrefix(p, protocolPrefix)
			var idx, life int
			if !ok {
				continue
			}
			if _, err := fmt.Sscanf(key, "c%d.%d", &idx, &life); err != nil || idx < 0 || idx >= len(a.r.plan.Clients) {
				continue
			}
			cp := a.r.plan.Clients[idx]
			reply = subjects.AuthReply{Allow: true, UserID: cp.User, Groups: cp.Groups, Protocol: p}
			a.mu.Lock()
			a.tokens[key] = ce.Token
			a.mu.Unlock()
			break
		}
	}
	b, _ := json.Marshal(reply)
	_ = m.Respond(b)
}

func (a *authResponder) token(key string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tokens[key]
}

func (a *authResponder) stop() { _ = a.sub.Unsubscribe() }

// publisher is the backends: it publishes the plan's commands at their
// times through JetStream, each with a Nats-Msg-Id so that a publish
// retried after a lost ack is stored once, and records each with the
// stream sequence of its ack.
type publisher struct {
	r    *Runner
	jobs chan *pubJob
	wg   sync.WaitGroup // jobs not yet settled

	published, acked, unacked, skipped, retried atomic.Int64
}

type pubJob struct {
	rec     PubRec
	subject string
	body    []byte
	header  nats.Header
}

const (
	publishWorkers  = 32
	publishAttempt  = 5 * time.Second
	publishGiveUp   = 60 * time.Second
	publishMaxQueue = 8192
)

func newPublisher(r *Runner) *publisher {
	p := &publisher{r: r, jobs: make(chan *pubJob, publishMaxQueue)}
	for i := 0; i < publishWorkers; i++ {
		go p.work()
	}
	return p
}

func (p *publisher) work() {
	for j := range p.jobs {
		p.publish(j)
		p.wg.Done()
	}
}

func (p *publisher) publish(j *pubJob) {
	j.rec.Start = time.Now()
	for {
		j.rec.Tries++
		ctx, cancel := context.WithTimeout(context.Background(), publishAttempt)
		ack, err := p.r.js.PublishMsg(ctx, &nats.Msg{Subject: j.subject, Data: j.body, Header: j.header})
		cancel()
		if err == nil {
			j.rec.Seq, j.rec.Ack, j.rec.Err = ack.Sequence, time.Now(), ""
			p.acked.Add(1)
			break
		}
		j.rec.Err = err.Error()
		if time.Since(j.rec.Start) > publishGiveUp {
			p.unacked.Add(1)
			break
		}
		p.retried.Add(1)
		time.Sleep(200 * time.Millisecond)
	}
	p.r.hist.add(j.rec)
}

// enqueue publishes one command (asynchronously).
func (p *publisher) enqueue(rec PubRec) {
	n := p.r.names
	j := &pubJob{rec: rec, header: nats.Header{}}
	j.rec.T = "pub"
	j.header.Set(subjects.HeaderMsgID, "chaos-"+rec.ID)
	j.body = []byte(rec.ID + " " + rec.Kind)
	switch rec.Kind {
	case KindSend:
		j.subject = n.Send(rec.Token)
	case KindBulk:
		j.subject = n.Send(rec.Token)
		j.body = append(j.body, ' ')
		j.body = append(j.body, strings.Repeat("x", bulkMessageBytes-len(j.body)-1)...)
	case KindClose:
		j.subject, j.body = n.Close(rec.Token), nil
	case KindBroadcast:
		j.subject = n.Broadcast()
		if len(rec.Exclude) > 0 {
			j.header.Set(subjects.HeaderExclude, strings.Join(rec.Exclude, ","))
		}
	case KindGroup:
		j.subject = n.Group(rec.Group)
	case KindUser:
		j.subject = n.User(rec.User)
	}
	p.published.Add(1)
	p.wg.Add(1)
	p.jobs <- j
}

// wait returns once every command enqueued is settled (acked or given up).
func (p *publisher) wait() { p.wg.Wait() }

// traffic publishes the plan's commands at their times; a client with no
// connection yet is skipped (it cannot be addressed).
func (p *publisher) traffic(ctx context.Context, phase time.Time) {
	for _, m := range p.r.plan.Traffic {
		if d := time.Until(phase.Add(m.At)); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		rec := PubRec{ID: m.ID, Kind: m.Kind, Group: m.Group, User: m.User}
		switch m.Kind {
		case KindSend:
			tok, _ := p.r.clients[m.Client].target()
			if tok == "" {
				p.skipped.Add(1)
				continue
			}
			rec.Client, rec.Token = m.Client, tok
		case KindBroadcast:
			for _, x := range m.Exclude {
				if tok, _ := p.r.clients[x].target(); tok != "" {
					rec.Exclude = append(rec.Exclude, tok)
				}
			}
		}
		p.enqueue(rec)
	}
}

func (p *publisher) progress() string {
	return fmt.Sprintf("published %d, acked %d, unacked %d, retried %d, queued %d; %d of %d clients connected, dial failures %d",
		p.published.Load(), p.acked.Load(), p.unacked.Load(), p.retried.Load(), len(p.jobs),
		p.r.liveConns(), len(p.r.clients), p.r.dialFailures.Load())
}

// actions carries out the plan's client actions at their times.
func (r *Runner) actions(ctx context.Context, phase time.Time) {
	closes := 0
	for _, a := range r.plan.Actions {
		if d := time.Until(phase.Add(a.At)); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		c := r.clients[a.Client]
		rec := ActionRec{T: "action", Kind: a.Kind, Client: a.Client, At: time.Now()}
		switch a.Kind {
		case ActionClientClose:
			tok, ok := c.closeNow(a.Pause)
			rec.Token = tok
			if !ok {
				rec.Detail = "skipped: no open connection"
			}
		case ActionBackendClose:
			tok, conn := c.target()
			if conn == nil || !conn.addCause(ActionBackendClose) {
				rec.Detail = "skipped: no open connection"
				break
			}
			c.mu.Lock()
			c.pauseTill = time.Now().Add(a.Pause)
			c.mu.Unlock()
			closes++
			rec.Token = tok
			r.pub.enqueue(PubRec{ID: fmt.Sprintf("x%d", closes), Kind: KindClose, Client: a.Client, Token: tok})
		}
		r.hist.add(rec)
	}
}
