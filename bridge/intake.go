package bridge

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
//   - a first delivery of sequence s: a consumer reads the stream in order
//     and delivers its redeliveries first, so everything of it before s came
//     before (redeliveries move no watermark);
//   - a probe: a message lookup (STREAM.MSG.GET, next_by_subj) per filter
//     subject of the consumer, from just past its watermark, sent when every
//     message up to m was stored: m is the highest sequence received, or the
//     stream's last sequence as the bridge last read it, if higher. The
//     lookups read the store itself: if they find nothing, or only something
//     after m, the watermark moves to m; if they find x, to x-1, and x is
//     delivered in time. In a drain the stream's last sequence lets one
//     probe cover the whole backlog.
//
// The pull's own "404 No Messages" is no such proof: the server answers it
// from a count of pending messages that it updates after storing, on another
// goroutine, so a message stored just before can be missing from it.
//
// A message goes on once both watermarks reach it. Each consumer has at most
// one no-wait pull and one long poll (batch 1, to wake up when idle) open, and
// at most one probe; a message held back by the other consumer's watermark
// sends that consumer a probe. In a drain the deliveries move the watermarks
// along; when messages come one by one, each waits for one round trip.
//
// The pulls are the JetStream pull protocol written out, not the client's
// Consume: the answers to the pulls and the probes all come on one
// subscription, handled on one goroutine, in the order they came.

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
	deadline time.Time
	active   time.Time // last delivery
}

type pullSource struct {
	consumer string
	filters  []string // the consumer's filter subjects, for probes
	probe    *probe   // the open probe, nil if none
	subject  string   // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
	more     bool     // the consumer may have more: pull again
	clear    uint64   // every message up to clear has been received
	// collect is the number of redeliveries still expected of what a
	// previous owner held; until they came (or collectUntil passed) the
	// watermark stays at the ack floor. delivered is where the consumer
	// stood when the intake started, the watermark once they came.
	collect      int
	delivered    uint64
	collectUntil time.Time
	notAfter     time.Time
	open         []string        // ids of the open pulls, oldest first
	queue        []jetstream.Msg // received, not handed on, in stream order
}

// probe is one round of lookups for a consumer's watermark (one per filter
// subject).
type probe struct {
	src      int
	mark     uint64 // every message up to it was stored before the lookups
	waiting  int
	found    uint64 // lowest sequence found past the watermark
	failed   bool
	deadline time.Time
}

type intake struct {
	nc      *nats.Conn
	msgGet  string // $JS.API.STREAM.MSG.GET.<stream>
	lastSeq func() uint64
	// fanOutClear, when the stream's log is followed (outlog.go), says up
	// to where no fan-out comes after a sequence; ok false when unknown.
	fanOutClear func(from uint64) (uint64, bool)
	maxBytes    int
	deliver     func(jetstream.Msg)
	// letGo says whether a direct message is a copy of a fan-out (a group
	// or user command stored in this partition), which only the fan-out
	// consumer pushes.
	letGo func(subject string) bool
	log   func(level slog.Level, msg string, args ...any)

	inbox string
	sub   *nats.Subscription

	mu      sync.Mutex
	src     [2]pullSource
	reqs    map[string]*pullReq
	probes  map[string]*probe
	next    uint64
	maxRecv uint64
	fromLog int // times the log moved the fan-out watermark
	stopped bool
	// dmu serializes hand-ons (flush), which happen outside mu.
	dmu sync.Mutex

	quit chan struct{}
	done chan struct{}
}

// intakeSource is one consumer of a partition, as the intake reads it.
type intakeSource struct {
	Consumer string
	Filters  []string
	// Delivered is the consumer's stream position when the intake starts
	// (ConsumerInfo.Delivered.Stream): everything up to it was delivered
	// before. Held messages (NumAckPending) above AckFloor were a previous
	// owner's: the server redelivers them before anything newer, and they
	// are waited for, up to CollectWait, before the watermark passes
	// them.
	Delivered   uint64
	AckFloor    uint64
	Held        int
	CollectWait time.Duration
}

func newIntake(nc *nats.Conn, stream string, direct, fanout intakeSource, lastSeq func() uint64, fanOutClear func(uint64) (uint64, bool), maxBytes int, deliver func(jetstream.Msg), letGo func(string) bool, log func(slog.Level, string, ...any)) (*intake, error) {
	in := &intake{
		nc: nc, maxBytes: maxBytes, deliver: deliver, letGo: letGo, log: log,
		msgGet: "$JS.API.STREAM.MSG.GET." + stream, lastSeq: lastSeq, fanOutClear: fanOutClear,
		inbox: nc.NewInbox(), reqs: map[string]*pullReq{}, probes: map[string]*probe{},
		quit: make(chan struct{}), done: make(chan struct{}),
	}
	for i, src := range []intakeSource{direct, fanout} {
		in.src[i] = pullSource{consumer: src.Consumer, filters: src.Filters, clear: src.Delivered, more: true,
			subject: "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + src.Consumer}
		if src.Held > 0 {
			s := &in.src[i]
			s.collect, s.delivered, s.clear = src.Held, src.Delivered, min(src.AckFloor, src.Delivered)
			s.collectUntil = time.Now().Add(src.CollectWait)
		}
	}
	sub, err := nc.Subscribe(in.inbox+".*", in.receive)
	if err != nil {
		return nil, err
	}
	// Never drop: a dropped delivery would leave a message received by no
	// one until its ack wait runs out, behind newer ones.
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
	// Statuses and probe answers come on the request's own subject;
	// deliveries keep the subject they were stored under.
	id, own := strings.CutPrefix(m.Subject, in.inbox+".")
	switch {
	case own && in.probes[id] != nil:
		in.probedLocked(id, m.Data)
	case own && m.Header.Get("Status") != "" && len(m.Data) == 0:
		in.statusLocked(id, in.reqs[id], m.Header.Get("Status"), m.Header.Get("Description"))
	case !own:
		in.messageLocked(m)
	}
	in.pullLocked()
	in.mu.Unlock()
	in.flush()
}

// flush hands on what both watermarks passed. It takes them under dmu, so
// that what one goroutine took before another is handed on before it.
func (in *intake) flush() {
	in.dmu.Lock()
	defer in.dmu.Unlock()
	in.mu.Lock()
	out := in.releaseLocked()
	in.mu.Unlock()
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
}

// openLocked reports whether source s has a pull of that kind open.
func (in *intake) openLocked(s *pullSource, noWait bool) bool {
	return slices.ContainsFunc(s.open, func(id string) bool { return in.reqs[id].noWait == noWait })
}

func (in *intake) statusLocked(id string, r *pullReq, status, desc string) {
	if r == nil {
		return
	}
	s := &in.src[r.src]
	switch status {
	case "100": // idle heartbeat
		return
	case "404": // no-wait: nothing more to deliver for now
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
			in.log(slog.LevelDebug, "pull refused", "consumer", s.consumer, "status", status, "description", desc)
		}
	default:
		s.notAfter = time.Now().Add(250 * time.Millisecond)
		in.log(slog.LevelDebug, "pull refused", "consumer", s.consumer, "status", status, "description", desc)
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
	switch {
	case s.collect > 0:
		// What a previous owner held comes back first; until it all
		// came, nothing moves the watermark.
		if meta.NumDelivered > 1 && seq <= s.delivered {
			s.collect--
			if s.collect == 0 {
				s.clear = max(s.clear, s.delivered)
			}
		}
	case meta.NumDelivered == 1:
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
		if s.collect > 0 && now.After(s.collectUntil) {
			in.log(slog.LevelWarn, "fewer messages came back than the previous owner held; going on", "consumer", s.consumer, "missing", s.collect)
			s.collect = 0
			s.clear = max(s.clear, s.delivered)
		}
		if len(o.queue) > 0 && streamSeq(o.queue[0]) > s.clear && s.collect == 0 && i == srcFanOut && in.fanOutClear != nil {
			// The log may already say no fan-out comes before the
			// direct message waiting; it is no fan-out itself.
			if to, ok := in.fanOutClear(s.clear + 1); ok {
				if head := streamSeq(o.queue[0]); to+1 >= head {
					to = max(to, head)
				}
				if to > s.clear {
					s.clear = to
					in.fromLog++
				}
			}
		}
		if len(o.queue) > 0 && streamSeq(o.queue[0]) > s.clear && s.collect == 0 && s.probe == nil && !now.Before(s.notAfter) {
			in.probeLocked(i)
		}
		if in.openLocked(s, true) || now.Before(s.notAfter) {
			continue
		}
		if s.more {
			in.sendLocked(i, true)
			continue
		}
		if !in.openLocked(s, false) {
			in.sendLocked(i, false)
		}
	}
}

type msgGetRequest struct {
	Seq        uint64 `json:"seq"`
	NextBySubj string `json:"next_by_subj"`
}

// probeLocked looks the stream up for a message of source src past its
// watermark, one lookup per filter subject. Every message up to the mark
// was stored before the lookups: the highest sequence received, or the
// stream's last sequence as last read (lastSeq), if higher.
func (in *intake) probeLocked(src int) {
	s := &in.src[src]
	pr := &probe{src: src, mark: max(in.maxRecv, in.lastSeq()), found: ^uint64(0), deadline: time.Now().Add(pullTimeout)}
	if pr.mark <= s.clear {
		return // nothing stored past the watermark that could be held back
	}
	for _, f := range s.filters {
		in.next++
		id := "g" + strconv.FormatUint(in.next, 36)
		body, _ := json.Marshal(msgGetRequest{Seq: s.clear + 1, NextBySubj: f})
		if err := in.nc.PublishRequest(in.msgGet, in.inbox+"."+id, body); err != nil {
			pr.failed = true
			break
		}
		in.probes[id] = pr
		pr.waiting++
	}
	if pr.waiting > 0 {
		s.probe = pr
	}
	if pr.failed {
		s.notAfter = time.Now().Add(250 * time.Millisecond)
	}
}

type msgGetResponse struct {
	Message *struct {
		Sequence uint64 `json:"seq"`
	} `json:"message"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// probedLocked takes one answer of a probe; with the last, it moves the
// watermark.
func (in *intake) probedLocked(id string, data []byte) {
	pr := in.probes[id]
	delete(in.probes, id)
	s := &in.src[pr.src]
	var r msgGetResponse
	switch err := json.Unmarshal(data, &r); {
	case err != nil:
		pr.failed = true
	case r.Message != nil:
		pr.found = min(pr.found, r.Message.Sequence)
	case r.Error != nil && r.Error.Code == 404: // nothing past the watermark
	default:
		pr.failed = true
		if r.Error != nil {
			in.log(slog.LevelDebug, "probe refused", "consumer", in.src[pr.src].consumer, "code", r.Error.Code, "description", r.Error.Description)
		}
	}
	pr.waiting--
	if pr.waiting > 0 || s.probe != pr {
		return
	}
	s.probe = nil
	if pr.failed {
		s.notAfter = time.Now().Add(250 * time.Millisecond)
		return
	}
	if pr.found > 0 {
		s.clear = max(s.clear, min(pr.mark, pr.found-1))
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
	in.reqs[id] = &pullReq{src: src, noWait: noWait, batch: req.Batch, deadline: deadline}
	s.open = append(s.open, id)
	if noWait {
		s.more = false
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
					in.log(slog.LevelDebug, "pull unanswered; asking again", "consumer", in.src[r.src].consumer)
					in.src[r.src].more = true
					in.doneLocked(id, r)
				case r.noWait && r.got > 0 && now.Sub(r.active) > quietPull:
					// A pull whose byte budget ran out exactly ends
					// without a status: it delivered, then went quiet.
					in.src[r.src].more = true
					in.doneLocked(id, r)
				}
			}
			for i := range in.src {
				if pr := in.src[i].probe; pr != nil && (reconnected || now.After(pr.deadline)) {
					in.src[i].probe = nil // its late answers are ignored
				}
			}
			for id, pr := range in.probes {
				if in.src[pr.src].probe != pr {
					delete(in.probes, id)
				}
			}
			in.pullLocked()
			in.mu.Unlock()
			in.flush()
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
	in.mu.Unlock()
	close(in.quit)
	<-in.done
	in.flush()
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

// outLastEvery is how often the bridge reads the outbound stream's last
// sequence for the partitions' probes.
const outLastEvery = 100 * time.Millisecond

// readOutLast keeps b.outLast, the outbound stream's last sequence, fresh:
// a probe sent after reading it knows every message up to it was stored.
func (b *Bridge) readOutLast() {
	defer b.wg.Done()
	subject := "$JS.API.STREAM.INFO." + b.names.StreamOut()
	t := time.NewTicker(outLastEvery)
	defer t.Stop()
	for {
		if b.ownedCount() > 0 {
			if m, err := b.nc.Request(subject, nil, time.Second); err == nil {
				var r struct {
					State *struct {
						LastSeq uint64 `json:"last_seq"`
					} `json:"state"`
				}
				if json.Unmarshal(m.Data, &r) == nil && r.State != nil {
					b.outLast.Store(max(b.outLast.Load(), r.State.LastSeq))
				}
			}
		}
		select {
		case <-b.quit:
			return
		case <-t.C:
		}
	}
}
