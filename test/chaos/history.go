package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// The history is JSON lines, one record each, with "t" naming the record's
// type. Faults, process events, client actions and publishes are written as
// they happen (a run that dies leaves what it had); connections with the
// frames they received, and what was read back from WS_IN and WS_DLQ, at
// the end. `-check FILE` runs the checker on a history again.

// RunRec opens a history: what the run was.
type RunRec struct {
	T           string    `json:"t"` // "run"
	Seed        int64     `json:"seed"`
	Start       time.Time `json:"start"`
	Duration    string    `json:"duration"`
	Faults      string    `json:"faults"`
	Repeat      string    `json:"repeat"`
	Clients     int       `json:"clients"`
	Rate        float64   `json:"rate"`
	Bridges     int       `json:"bridges"`
	Edges       int       `json:"edges"`
	FanOutGrace string    `json:"fanOutGrace"`
	Partitions  int       `json:"partitions"`
	Dir         string    `json:"dir"`
}

// FaultRec is a fault starting, ending, or skipped at run time.
type FaultRec struct {
	T      string    `json:"t"` // "fault"
	N      int       `json:"n"`
	Kind   string    `json:"kind"`
	Target string    `json:"target"`
	Phase  string    `json:"phase"` // start, end, skip
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

// ProcRec is a process started, signalled, exited, or found (un)healthy.
type ProcRec struct {
	T        string    `json:"t"` // "proc"
	Name     string    `json:"name"`
	Event    string    `json:"event"` // start, signal, exit, health
	At       time.Time `json:"at"`
	Pid      int       `json:"pid,omitempty"`
	Code     int       `json:"code,omitempty"`
	Intended bool      `json:"intended,omitempty"`
	Ready    bool      `json:"ready,omitempty"` // exit: it had been ready since it started
	Detail   string    `json:"detail,omitempty"`
	Log      string    `json:"log,omitempty"`
}

// ActionRec is a client action carried out.
type ActionRec struct {
	T      string    `json:"t"` // "action"
	Kind   string    `json:"kind"`
	Client int       `json:"client"`
	Token  string    `json:"token,omitempty"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

// PubRec is one command published, with the stream sequence of its
// publish ack (0 when no ack came).
type PubRec struct {
	T       string    `json:"t"` // "pub"
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Client  int       `json:"client,omitempty"` // send, bulk, close
	Token   string    `json:"token,omitempty"`  // send, bulk, close
	Group   string    `json:"group,omitempty"`
	User    string    `json:"user,omitempty"`
	Exclude []string  `json:"exclude,omitempty"` // broadcast: tokens
	Start   time.Time `json:"start"`             // first publish attempt
	Ack     time.Time `json:"ack,omitzero"`
	Seq     uint64    `json:"seq,omitempty"`
	Tries   int       `json:"tries,omitempty"`
	Err     string    `json:"err,omitempty"`
}

// Cause is something the runner did that may end a connection, and when.
type Cause struct {
	Kind string    `json:"kind"` // client-close, backend-close, edge-term, edge-kill, stall
	At   time.Time `json:"at"`
}

// ConnRec is one WebSocket connection of a client, and every frame it
// received, in order (message ids).
type ConnRec struct {
	T      string    `json:"t"` // "conn"
	Client int       `json:"client"`
	Life   int       `json:"life"`
	Token  string    `json:"token"`
	Edge   int       `json:"edge"`
	Open   time.Time `json:"open"`
	// Ended: the connection ended during the run (End is the first sign
	// of it: a cause, the client seeing it fail); live connections are
	// those still open when the history was taken.
	Ended       bool      `json:"ended"`
	End         time.Time `json:"end,omitzero"`
	Causes      []Cause   `json:"causes,omitempty"`
	CloseStatus int       `json:"closeStatus,omitempty"`
	EndErr      string    `json:"endErr,omitempty"`
	Frames      []string  `json:"frames"`
	// FrameAt is when each frame arrived, in milliseconds since Open.
	FrameAt []int64  `json:"frameAt,omitempty"`
	Bad     []string `json:"bad,omitempty"` // frames that name no message
}

// EventRec is a connect or disconnect event read back from WS_IN.
type EventRec struct {
	T         string    `json:"t"` // "connect", "disconnect"
	Token     string    `json:"token"`
	ConnID    string    `json:"connId,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	User      string    `json:"user,omitempty"`
	Groups    []string  `json:"groups,omitempty"`
	Protocols []string  `json:"protocols,omitempty"`
	Stored    time.Time `json:"stored"`
	Seq       uint64    `json:"seq"`
}

// DLQRec is a dead letter read back from WS_DLQ.
type DLQRec struct {
	T      string    `json:"t"` // "dlq"
	Kind   string    `json:"kind"`
	Token  string    `json:"token"`
	ID     string    `json:"id"` // the message id from the body
	Reason string    `json:"reason"`
	Error  string    `json:"error,omitempty"`
	Status string    `json:"status,omitempty"`
	Stored time.Time `json:"stored"`
	Seq    uint64    `json:"seq"`
}

// DrainRec says how the settle phase ended.
type DrainRec struct {
	T         string    `json:"t"` // "drain"
	At        time.Time `json:"at"`
	Drained   bool      `json:"drained"`
	OutMsgs   uint64    `json:"outMsgs"`
	Waited    string    `json:"waited"`
	Detail    string    `json:"detail,omitempty"`
	LiveConns int       `json:"liveConns"`
}

// PendingRec lists stream sequences still stored in WS_OUT when a settle
// did not drain: owed messages among them are not lost, only late.
type PendingRec struct {
	T    string   `json:"t"` // "pending"
	Seqs []uint64 `json:"seqs"`
}

// TakeRec is a partition a bridge took over (handed off, or from a crashed
// or cut owner whose lease expired), read from the bridge's log: it starts
// from the position committed and re-reads what lies past it, expanding
// fan-outs again against the registry of then.
type TakeRec struct {
	T         string    `json:"t"` // "take"
	Bridge    string    `json:"bridge"`
	Partition int       `json:"partition"`
	At        time.Time `json:"at"`
	Position  uint64    `json:"position"`
}

// History is a run's records, the checker's input.
type History struct {
	Run         RunRec
	Faults      []FaultRec
	Procs       []ProcRec
	Actions     []ActionRec
	Pubs        []PubRec
	Conns       []ConnRec
	Connects    []EventRec
	Disconnects []EventRec
	DLQ         []DLQRec
	Drain       *DrainRec
	Pending     map[uint64]bool
	Takes       []TakeRec
}

// historyWriter appends records to the history file as they come.
type historyWriter struct {
	mu  sync.Mutex
	f   *os.File
	w   *bufio.Writer
	err error
	h   *History // the same records, in memory
}

func newHistoryWriter(path string) (*historyWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &historyWriter{f: f, w: bufio.NewWriterSize(f, 1<<16), h: &History{}}, nil
}

// add writes one record and keeps it.
func (hw *historyWriter) add(rec any) {
	b, err := json.Marshal(rec)
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if err != nil {
		hw.err = err
		return
	}
	hw.keep(rec)
	if _, err := hw.w.Write(append(b, '\n')); err != nil && hw.err == nil {
		hw.err = err
	}
}

func (hw *historyWriter) keep(rec any) {
	h := hw.h
	switch r := rec.(type) {
	case RunRec:
		h.Run = r
	case FaultRec:
		h.Faults = append(h.Faults, r)
	case ProcRec:
		h.Procs = append(h.Procs, r)
	case ActionRec:
		h.Actions = append(h.Actions, r)
	case PubRec:
		h.Pubs = append(h.Pubs, r)
	case ConnRec:
		h.Conns = append(h.Conns, r)
	case EventRec:
		if r.T == "connect" {
			h.Connects = append(h.Connects, r)
		} else {
			h.Disconnects = append(h.Disconnects, r)
		}
	case DLQRec:
		h.DLQ = append(h.DLQ, r)
	case DrainRec:
		h.Drain = &r
	case TakeRec:
		h.Takes = append(h.Takes, r)
	case PendingRec:
		if h.Pending == nil {
			h.Pending = map[uint64]bool{}
		}
		for _, s := range r.Seqs {
			h.Pending[s] = true
		}
	}
}

// flush pushes buffered records to the file (they are also flushed every
// second by the runner, so a killed run loses little).
func (hw *historyWriter) flush() error {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if err := hw.w.Flush(); err != nil && hw.err == nil {
		hw.err = err
	}
	return hw.err
}

func (hw *historyWriter) close() error {
	err := hw.flush()
	if cerr := hw.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// history returns the records kept so far. The caller must not write
// while it reads them (the runner reads at the end).
func (hw *historyWriter) history() *History {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	return hw.h
}

// ReadHistory loads a history file.
func ReadHistory(r io.Reader) (*History, error) {
	h := &History{}
	hw := &historyWriter{h: h}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	line := 0
	for sc.Scan() {
		line++
		var head struct {
			T string `json:"t"`
		}
		b := sc.Bytes()
		if err := json.Unmarshal(b, &head); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		var rec any
		var err error
		switch head.T {
		case "run":
			rec, err = decode[RunRec](b)
		case "fault":
			rec, err = decode[FaultRec](b)
		case "proc":
			rec, err = decode[ProcRec](b)
		case "action":
			rec, err = decode[ActionRec](b)
		case "pub":
			rec, err = decode[PubRec](b)
		case "conn":
			rec, err = decode[ConnRec](b)
		case "connect", "disconnect":
			rec, err = decode[EventRec](b)
		case "dlq":
			rec, err = decode[DLQRec](b)
		case "drain":
			rec, err = decode[DrainRec](b)
		case "pending":
			rec, err = decode[PendingRec](b)
		case "take":
			rec, err = decode[TakeRec](b)
		default:
			return nil, fmt.Errorf("line %d: unknown record type %q", line, head.T)
		}
		if err != nil {
			return nil, fmt.Errorf("line %d (%s): %w", line, head.T, err)
		}
		hw.keep(rec)
	}
	return h, sc.Err()
}

func decode[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}
