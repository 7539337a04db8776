package bridge

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The intake of a partition reads its two consumers, the direct one (sends
// and closes: one filter subject, which the server serves through its
// subject index) and the fan-out one (broadcast, group, user), and hands
// every message on in stream order, as a single consumer with all those
// filter subjects would. That single consumer is what the first partitioned
// release used; the server walks the stream message by message for each
// subject such a consumer matches, so one bridge draining a backlog spent
// most of its time there (bridge/README.md has the figures).
//
// Merging two consumers needs to know, before handing on message s of one,
// that no message of the other with a smaller sequence is still to come. A
// watermark per consumer says up to where everything it has is received:
//   - a first delivery of sequence s: a consumer delivers new messages in
//     stream order, after the redeliveries it has, so everything before s
//     came before it (redeliveries move no watermark);
//   - a no-wait pull answered "404 No Messages" that was sent when the
//     highest sequence received was m: the server answers so only when the
//     consumer has nothing left to deliver, and every message up to m was
//     stored before the pull was sent. Its answers come on one subscription,
//     in the order the consumer sent them, so whatever it delivered before
//     the 404 is already here.
//
// A message goes on once both watermarks reach it. Each consumer has at most
// one no-wait pull and one long poll (batch 1, to wake up when idle) open;
// a message arriving while the other consumer's watermark is behind sends
// that consumer a no-wait pull. In a drain the watermarks move with the
// deliveries; when messages come one by one, each waits for one round trip
// to the other consumer.
//
// The pulls are the JetStream pull protocol written out, not the client's
// Consume: the watermark needs the 404 of one pull to follow, on the same
// subscription, everything the consumer sent before it.

const (
	srcDirect = iota
	srcFanOut
)

// intakeBatch is the number of messages one no-wait pull asks for.
const intakeBatch = 256

// quietPull is how long a no-wait pull that delivered may stay quiet before
// it is taken for finished.
const quietPull = 500 * time.Millisecond

// pullTimeout is how long an answer may take before the pull is deemed lost
// (a reconnect or a leader change drops pulls without a word).
const pullTimeout = 5 * time.Second

type pullReq struct {
	src      int
	noWait   bool
	batch    int
	got      int
	mark     uint64 // highest sequence received when it was sent
	deadline time.Time
	active   time.Time // last delivery
}

type pullSource struct {
	consumer string
	subject  string // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
	nowait   string // id of the open no-wait pull, "" if none
	long     string // id of the open long poll, "" if none
	more     bool   // the consumer may have more: pull again
	clear    uint64 // every message up to clear has been received
	notAfter time.Time
	open     []string        // ids of the open pulls, oldest first
	queue    []jetstream.Msg // received, not handed on, in stream order
}

type intake struct {
	nc       *nats.Conn
	maxBytes int
	deliver  func(jetstream.Msg)
	// letGo says whether a direct message is a copy of a fan-out (a group
	// or user command stored in this partition), which only the fan-out
	// consumer pushes.
	letGo func(subject string) bool
	logf  func(msg string, args ...any)

	inbox string
	sub   *nats.Subscription

	mu      sync.Mutex
	src     [2]pullSource
	reqs    map[string]*pullReq
	next    uint64
	maxRecv uint64
	stopped bool
	// dmu serializes hand-ons, which happen outside mu.
	dmu sync.Mutex

	quit chan struct{}
	done chan struct{}
}

func newIntake(nc *nats.Conn, stream, direct, fanout string, maxBytes int, deliver func(jetstream.Msg), letGo func(string) bool, logf func(string, ...any)) (*intake, error) {
	in := &intake{
		nc: nc, maxBytes: maxBytes, deliver: deliver, letGo: letGo, logf: logf,
		inbox: nc.NewInbox(), reqs: map[string]*pullReq{},
		quit: make(chan struct{}), done: make(chan struct{}),
	}
	in.src[srcDirect] = pullSource{consumer: direct, subject: "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + direct, more: true}
	in.src[srcFanOut] = pullSource{consumer: fanout, subject: "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + fanout, more: true}
	sub, err := nc.Subscribe(in.inbox+".*", in.receive)
	if err != nil {
		return nil, err
	}
	// Never drop: a dropped delivery behind a 404 would move a watermark
	// past a message not received.
	_ = sub.SetPendingLimits(-1, -1)
	in.sub = sub
	in.mu.Lock()
	in.pullLocked()
	in.mu.Unlock()
	go in.tick()
	return in, nil
}

// receive handles every answer to the pulls, in the order they came.
func (in *intake) receive(m *nats.Msg) {
	in.mu.Lock()
	if status := m.Header.Get("Status"); status != "" && len(m.Data) == 0 {
		// Statuses come on the pull's own subject; deliveries keep the
		// subject they were stored under.
		if id, ok := strings.CutPrefix(m.Subject, in.inbox+"."); ok {
			in.statusLocked(id, in.reqs[id], status, m.Header.Get("Description"))
		}
	} else {
		in.messageLocked(m)
	}
	out := in.releaseLocked()
	in.pullLocked()
	in.mu.Unlock()
	in.hand(out)
}

func (in *intake) hand(out []jetstream.Msg) {
	if len(out) == 0 {
		return
	}
	in.dmu.Lock()
	defer in.dmu.Unlock()
	for _, m := range out {
		in.deliver(m)
	}
}

func (in *intake) doneLocked(id string, r *pullReq) {
	if r == nil {
		return
	}
	delete(in.reqs, id)
	s := &in.src[r.src]
	if i := slices.Index(s.open, id); i >= 0 {
		s.open = slices.Delete(s.open, i, i+1)
	}
	if s.nowait == id {
		s.nowait = ""
	}
	if s.long == id {
		s.long = ""
	}
}

func (in *intake) statusLocked(id string, r *pullReq, status, desc string) {
	if r == nil {
		return
	}
	s := &in.src[r.src]
	switch status {
	case "100": // idle heartbeat
		return
	case "404": // no-wait: the consumer has nothing left to deliver
		s.clear = max(s.clear, r.mark)
		s.more = false
	case "408":
		if r.noWait {
			// "Requests Pending": the long poll takes what there is.
			s.notAfter = time.Now().Add(10 * time.Millisecond)
			s.more = true
		} else {
			s.more = false // the long poll expired
		}
	case "409":
		// Batch completed, max bytes reached: ask again. Anything else
		// (leader change, consumer deleted, limits) after a pause.
		s.more = true
		if !strings.Contains(desc, "Batch Completed") && !strings.Contains(desc, "MaxBytes") {
			s.notAfter = time.Now().Add(250 * time.Millisecond)
			in.logf("pull refused", "consumer", s.consumer, "status", status, "description", desc)
		}
	default:
		s.notAfter = time.Now().Add(250 * time.Millisecond)
		in.logf("pull refused", "consumer", s.consumer, "status", status, "description", desc)
	}
	in.doneLocked(id, r)
}

func (in *intake) messageLocked(m *nats.Msg) {
	pm := &pulled{m: m, nc: in.nc}
	meta, err := m.Metadata()
	if err != nil {
		// Not a JetStream message: hand it on, the partition logs it.
		in.src[srcFanOut].queue = append(in.src[srcFanOut].queue, pm)
		return
	}
	src := srcFanOut
	if meta.Consumer == in.src[srcDirect].consumer {
		src = srcDirect
	}
	s := &in.src[src]
	seq := meta.Sequence.Stream
	in.maxRecv = max(in.maxRecv, seq)
	if meta.NumDelivered == 1 {
		s.clear = max(s.clear, seq)
	}
	// The consumer serves its pulls in the order they came: this one is
	// for the oldest open.
	if len(s.open) > 0 {
		id := s.open[0]
		r := in.reqs[id]
		r.got++
		r.active = time.Now()
		if !r.noWait {
			s.more = true
		}
		if r.got >= r.batch {
			s.more = true
			in.doneLocked(id, r)
		}
	}
	if src == srcDirect && in.letGo(m.Subject) {
		_ = pm.Ack()
		return
	}
	i, found := slices.BinarySearchFunc(s.queue, seq, func(x jetstream.Msg, seq uint64) int { return cmp.Compare(streamSeq(x), seq) })
	if found {
		s.queue[i] = pm // a redelivery of one not handed on yet
		return
	}
	s.queue = slices.Insert(s.queue, i, jetstream.Msg(pm))
}

// releaseLocked takes the messages both watermarks passed, in stream order.
func (in *intake) releaseLocked() []jetstream.Msg {
	w := min(in.src[srcDirect].clear, in.src[srcFanOut].clear)
	if in.stopped {
		w = ^uint64(0)
	}
	var out []jetstream.Msg
	d, f := &in.src[srcDirect].queue, &in.src[srcFanOut].queue
	for {
		var take *[]jetstream.Msg
		switch {
		case len(*d) > 0 && streamSeq((*d)[0]) <= w && (len(*f) == 0 || streamSeq((*d)[0]) < streamSeq((*f)[0])):
			take = d
		case len(*f) > 0 && streamSeq((*f)[0]) <= w:
			take = f
		}
		if take == nil {
			return out
		}
		out = append(out, (*take)[0])
		(*take)[0] = nil
		*take = (*take)[1:]
	}
}

// pullLocked opens the pulls needed: a no-wait pull to a consumer that may
// have more, or whose watermark holds back a message of the other; a long
// poll to one with nothing, to wake up when it gets something.
func (in *intake) pullLocked() {
	if in.stopped {
		return
	}
	now := time.Now()
	for i := range in.src {
		s, o := &in.src[i], &in.src[1-i]
		if s.nowait != "" || now.Before(s.notAfter) {
			continue
		}
		blocking := len(o.queue) > 0 && streamSeq(o.queue[0]) > s.clear
		if s.more || blocking {
			in.sendLocked(i, true)
			continue
		}
		if s.long == "" {
			in.sendLocked(i, false)
		}
	}
}

type nextRequest struct {
	Batch    int           `json:"batch"`
	MaxBytes int           `json:"max_bytes,omitempty"`
	NoWait   bool          `json:"no_wait,omitempty"`
	Expires  time.Duration `json:"expires,omitempty"`
}

func (in *intake) sendLocked(src int, noWait bool) {
	s := &in.src[src]
	in.next++
	id := strconv.FormatUint(in.next, 36)
	req := nextRequest{Batch: intakeBatch, MaxBytes: in.maxBytes, NoWait: true}
	deadline := time.Now().Add(pullTimeout)
	if !noWait {
		req = nextRequest{Batch: 1, MaxBytes: in.maxBytes, Expires: pullExpiry}
		deadline = time.Now().Add(pullExpiry + pullTimeout)
	}
	body, _ := json.Marshal(req)
	if err := in.nc.PublishRequest(s.subject, in.inbox+"."+id, body); err != nil {
		s.notAfter = time.Now().Add(250 * time.Millisecond)
		return
	}
	in.reqs[id] = &pullReq{src: src, noWait: noWait, batch: req.Batch, mark: in.maxRecv, deadline: deadline}
	s.open = append(s.open, id)
	if noWait {
		s.nowait = id
		s.more = false
	} else {
		s.long = id
	}
}

// tick forgets pulls that got no answer in time, or were sent before a
// reconnect, and opens those a pause held back.
func (in *intake) tick() {
	defer close(in.done)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	reconnects := in.nc.Stats().Reconnects
	for {
		select {
		case <-in.quit:
			return
		case now := <-t.C:
			reconnected := false
			if r := in.nc.Stats().Reconnects; r != reconnects {
				reconnects, reconnected = r, true
			}
			in.mu.Lock()
			for id, r := range in.reqs {
				switch {
				case reconnected:
					// The server forgot the pulls of the old connection.
					in.src[r.src].more = true
					in.doneLocked(id, r)
				case now.After(r.deadline):
					in.logf("pull unanswered; asking again", "consumer", in.src[r.src].consumer)
					in.src[r.src].more = true
					in.doneLocked(id, r)
				case r.noWait && r.got > 0 && now.Sub(r.active) > quietPull:
					// A pull whose byte budget ran out exactly ends
					// without a status: it delivered, then went quiet.
					in.src[r.src].more = true
					in.doneLocked(id, r)
				}
			}
			in.pullLocked()
			in.mu.Unlock()
		}
	}
}

// stop opens no more pulls and hands on what was received, in stream order
// (the partition is stopping, so it keeps them to give back). Deliveries to
// pulls still open are handed on as they come, until the subscription ends:
// unsubscribe once the pulls expired.
func (in *intake) stop() {
	in.mu.Lock()
	if in.stopped {
		in.mu.Unlock()
		return
	}
	in.stopped = true
	out := in.releaseLocked()
	in.mu.Unlock()
	close(in.quit)
	<-in.done
	in.hand(out)
}

// pending reports the pulls still open.
func (in *intake) pending() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.reqs)
}

// close ends the subscription; what it still gets is redelivered by the
// server after the ack wait.
func (in *intake) close() { _ = in.sub.Unsubscribe() }

// pulled is a message delivered to a pull of the intake, as a jetstream.Msg.
type pulled struct {
	m  *nats.Msg
	nc *nats.Conn
}

func (p *pulled) Metadata() (*jetstream.MsgMetadata, error) {
	md, err := p.m.Metadata()
	if err != nil {
		return nil, err
	}
	return &jetstream.MsgMetadata{
		Sequence:     jetstream.SequencePair{Consumer: md.Sequence.Consumer, Stream: md.Sequence.Stream},
		NumDelivered: md.NumDelivered,
		NumPending:   md.NumPending,
		Timestamp:    md.Timestamp,
		Stream:       md.Stream,
		Consumer:     md.Consumer,
		Domain:       md.Domain,
	}, nil
}

func (p *pulled) Data() []byte         { return p.m.Data }
func (p *pulled) Headers() nats.Header { return p.m.Header }
func (p *pulled) Subject() string      { return p.m.Subject }
func (p *pulled) Reply() string        { return p.m.Reply }

func (p *pulled) ack(body string) error {
	if p.m.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	return p.nc.Publish(p.m.Reply, []byte(body))
}

func (p *pulled) Ack() error        { return p.ack("+ACK") }
func (p *pulled) Nak() error        { return p.ack("-NAK") }
func (p *pulled) InProgress() error { return p.ack("+WPI") }
func (p *pulled) Term() error       { return p.ack("+TERM") }

func (p *pulled) TermWithReason(reason string) error { return p.ack("+TERM " + reason) }

func (p *pulled) NakWithDelay(delay time.Duration) error {
	if delay <= 0 {
		return p.Nak()
	}
	return p.ack(fmt.Sprintf(`-NAK {"delay": %d}`, delay.Nanoseconds()))
}

func (p *pulled) DoubleAck(ctx context.Context) error {
	if p.m.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	_, err := p.nc.RequestWithContext(ctx, p.m.Reply, []byte("+ACK"))
	return err
}
