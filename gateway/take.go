package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// A session resumed at another instance than the one holding it is taken
// from the holder over its push address (gateway/README.md, "Across
// instances"): the holder hands over what the session kept and answers
// later pushes for it with 503; the new holder writes itself into the
// connection's registry record, where bridges (and survivors sweeping a
// vanished instance) look before the instance the id names.

// Headers of a take request.
const (
	headerTake         = "Ws-Session-Take"     // the session key the client presented
	headerTakeReceived = "Ws-Session-Received" // how many data messages the client has
	headerTakeTo       = "Ws-Session-To"       // the instance taking it
)

// takeLater is resume's outcome when the holder could not be asked now.
const takeLater = "later"

// takeHops bounds how often a take follows a session that moved on.
const takeHops = 3

// takeTimeout bounds one take request.
const takeTimeout = 10 * time.Second

// takeReply is the answer to a take request: the push address's errNo and
// errMsg, and the session, or why not.
type takeReply struct {
	ErrNo   int           `json:"errNo"`
	ErrMsg  string        `json:"errMsg"`
	Reason  string        `json:"reason,omitempty"`  // a reset reason
	MovedTo string        `json:"movedTo,omitempty"` // it moved on to this instance
	Session *takenSession `json:"session,omitempty"`
}

// takenSession is what a session kept, handed over.
type takenSession struct {
	ID      string       `json:"id"`
	In      uint64       `json:"in"`
	Base    uint64       `json:"base"`
	LastSeq uint64       `json:"lastSeq"`
	SeqSeen bool         `json:"seqSeen"`
	Why     string       `json:"why"`
	Closing bool         `json:"closing,omitempty"`
	Frames  []takenFrame `json:"frames"`
}

type takenFrame struct {
	Binary bool    `json:"binary,omitempty"`
	Seq    *uint64 `json:"seq,omitempty"`
	Data   []byte  `json:"data"` // with its prefix
}

// serveTake hands a suspended session to the instance that asks for it
// (its client resumed there). A session whose socket is still served here
// (the client saw the drop first) has that socket closed first.
func (g *Gateway) serveTake(w http.ResponseWriter, r *http.Request) {
	reply := func(status int, rep takeReply) {
		rep.ErrNo = status
		if status == http.StatusOK {
			rep.ErrNo = 0
		}
		body, _ := json.Marshal(rep)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		reply(http.StatusMethodNotAllowed, takeReply{ErrMsg: "take a session with POST"})
		return
	}
	_, id, secret, err := parseKey(r.Header.Get(headerTake))
	if err != nil {
		reply(http.StatusBadRequest, takeReply{ErrMsg: err.Error(), Reason: resetUnknown})
		return
	}
	received, err := strconv.ParseUint(r.Header.Get(headerTakeReceived), 10, 64)
	if err != nil {
		reply(http.StatusBadRequest, takeReply{ErrMsg: headerTakeReceived + ": want a count", Reason: resetUnknown})
		return
	}
	to := r.Header.Get(headerTakeTo)
	if subjects.CheckInstanceID(to) != nil {
		reply(http.StatusBadRequest, takeReply{ErrMsg: headerTakeTo + ": want the instance id taking the session", Reason: resetUnknown})
		return
	}
	s := g.session(id)
	if s == nil {
		if t, ok := g.tombOf(id); ok {
			if t.movedTo != "" {
				reply(http.StatusConflict, takeReply{ErrMsg: "session moved", MovedTo: t.movedTo})
				return
			}
			reply(http.StatusGone, takeReply{ErrMsg: "session over: " + t.reason, Reason: t.reason})
			return
		}
		reply(http.StatusNotFound, takeReply{ErrMsg: "no such session", Reason: resetUnknown})
		return
	}
	if !s.secretOK(secret) || !s.awaitSuspended() {
		reply(http.StatusNotFound, takeReply{ErrMsg: "no such session", Reason: resetUnknown})
		return
	}
	s.mu.Lock()
	if s.state != sessSuspended || !s.acked(received) {
		s.mu.Unlock()
		reply(http.StatusNotFound, takeReply{ErrMsg: "no such session, or the client's count does not fit it", Reason: resetUnknown})
		return
	}
	ts := &takenSession{ID: s.id, In: s.in, Base: s.base, LastSeq: s.lastSeq, SeqSeen: s.seqSeen, Why: s.why, Closing: s.closing}
	s.movedTo = to // before it ends: a push that finds it ended is told where it went
	for _, f := range s.retire() {
		tf := takenFrame{Binary: f.typ == websocket.MessageBinary, Data: f.data}
		if f.seq.set {
			n := f.seq.n
			tf.Seq = &n
		}
		ts.Frames = append(ts.Frames, tf)
	}
	s.mu.Unlock()
	g.retired(s, tomb{movedTo: to}, "moved")
	g.log.Debug("session handed to another instance", "conn", id, "to", to, "frames", len(ts.Frames))
	reply(http.StatusOK, takeReply{ErrMsg: "ok", Session: ts})
}

// resumeRemote takes the session of c's id from the instance holding it,
// follows it when it moved on, and attaches c to it: "" when it did, else
// a reset reason, or takeLater.
func (e *edge) resumeRemote(ctx context.Context, c *conn, holder, key string, received uint64) string {
	g := e.g
	_, _, secret, _ := parseKey(key)
	for range takeHops {
		if holder == g.opts.InstanceID {
			return g.resumeLocal(c, secret, received)
		}
		rep, reason := e.take(ctx, holder, key, received)
		switch {
		case reason != "":
			return reason
		case rep.MovedTo != "":
			holder = rep.MovedTo
			continue
		}
		ts := rep.Session
		if ts.ID != c.id {
			e.log.Warn("take answered with another session", "asked", c.id, "got", ts.ID, "holder", holder)
			return resetUnknown
		}
		s := &session{g: g, id: ts.ID, secret: secret, changed: make(chan struct{}), state: sessSuspended,
			base: ts.Base, in: ts.In, lastSeq: ts.LastSeq, seqSeen: ts.SeqSeen, why: ts.Why, closing: ts.Closing}
		for _, tf := range ts.Frames {
			f := outgoing{typ: websocket.MessageText, data: tf.Data}
			if tf.Binary {
				f.typ = websocket.MessageBinary
			}
			if tf.Seq != nil {
				f.seq = seq{n: *tf.Seq, set: true}
			}
			s.frames = append(s.frames, f)
			s.bytes += int64(len(tf.Data))
		}
		// Over this instance's bounds or not, the frames were taken:
		// counted, and the next push past the bound ends the session.
		g.sessBytes.Add(s.bytes)
		g.smu.Lock()
		if old := g.sessions[s.id]; old != nil {
			g.smu.Unlock()
			e.log.Warn("took a session this instance holds already", "conn", s.id)
			return resetUnknown
		}
		g.sessions[s.id] = s
		delete(g.tombs, s.id)
		g.smu.Unlock()
		e.handedOut(s.id) // this life's, should an earlier life's sweep still be due
		g.sessSuspended.Add(1)
		if reason := g.attach(s, c, received, false); reason != "" {
			return reason
		}
		e.wg.Add(1)
		go func() { defer e.wg.Done(); e.claim(s.id) }()
		return ""
	}
	return resetUnknown
}

// take asks holder for the session: its reply, or a reset reason (or
// takeLater) when there is nothing to take now.
func (e *edge) take(ctx context.Context, holder, key string, received uint64) (takeReply, string) {
	ctx, cancel := context.WithTimeout(ctx, takeTimeout)
	defer cancel()
	if subjects.CheckInstanceID(holder) != nil || e.instances == nil {
		return takeReply{}, resetUnknown
	}
	pushURL, err := e.pushURLOf(ctx, holder)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// Gone (or cut off so long its record aged out): what it held
		// is announced lost by the survivors.
		return takeReply{}, resetLost
	}
	if err != nil {
		e.log.Info("take: the holder's push URL not read", "holder", holder, "err", err)
		return takeReply{}, takeLater
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, pushURL, nil)
	if err != nil {
		return takeReply{}, takeLater
	}
	req.Header.Set(headerTake, key)
	req.Header.Set(headerTakeReceived, strconv.FormatUint(received, 10))
	req.Header.Set(headerTakeTo, e.g.opts.InstanceID)
	if tok := e.g.opts.PushToken; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := e.probe.Do(req)
	if err != nil {
		e.log.Info("take: the instance holding the session did not answer", "holder", holder, "err", err)
		return takeReply{}, takeLater
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, takeBodyLimit(e.g)))
	var rep takeReply
	if err == nil {
		err = json.Unmarshal(body, &rep)
	}
	switch {
	case err != nil:
		e.log.Info("take: unreadable answer", "holder", holder, "status", resp.StatusCode, "err", err)
		return takeReply{}, takeLater
	case resp.StatusCode == http.StatusOK && rep.Session != nil:
		return rep, ""
	case resp.StatusCode == http.StatusConflict && rep.MovedTo != "":
		return rep, ""
	case rep.Reason != "":
		return takeReply{}, rep.Reason
	}
	e.log.Info("take refused", "holder", holder, "status", resp.StatusCode, "errMsg", rep.ErrMsg)
	return takeReply{}, takeLater
}

// takeBodyLimit bounds a take's answer: a session's buffer, in base64 and
// JSON, with room.
func takeBodyLimit(g *Gateway) int64 { return g.opts.ResumeBuffer*2 + g.opts.MaxMessageSize*2 + 1<<20 }

// claim writes this instance into the registry record of a connection it
// took ("instance"), so bridges route its pushes here rather than to the
// instance its id names. Retried while NATS does not take it, for as long as
// the instance runs (the old holder answers 503 meanwhile, which bridges
// retry).
func (e *edge) claim(id string) {
	token := subjects.Token(id)
	wait := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), natsStepTimeout)
		err := e.setHolder(ctx, token)
		cancel()
		if err == nil {
			return
		}
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			e.log.Info("session taken for a connection without a registry record", "conn", id)
			return
		}
		e.log.Warn("registry record not claimed for a taken session; retrying", "conn", id, "err", err)
		select {
		case <-e.quit:
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// setHolder sets "instance" in token's registry record to this instance,
// keeping every other field as it is.
func (e *edge) setHolder(ctx context.Context, token string) error {
	reg, err := e.registryKV(ctx)
	if err != nil {
		return err
	}
	if reg == nil {
		return jetstream.ErrKeyNotFound
	}
	self, _ := json.Marshal(e.g.opts.InstanceID)
	for try := 0; ; try++ {
		en, err := reg.Get(ctx, token)
		if err != nil {
			return err
		}
		var rec map[string]json.RawMessage
		if err := json.Unmarshal(en.Value(), &rec); err != nil {
			return fmt.Errorf("registry record %s: %w", token, err)
		}
		rec[subjects.RecordInstance] = self
		v, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		_, err = reg.Update(ctx, token, v, en.Revision())
		if err == nil || try == 10 {
			return err
		}
	}
}
