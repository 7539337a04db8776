package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/wsbridge/wsbridge/subjects"
)

// dlqUsage is the synopsis of `wsbridge dlq`.
const dlqUsage = ` list|show|redrive [flags] [SEQ]

Read the dead letters stored in WS_DLQ, and publish chosen ones again.

  wsbridge dlq list [filters] [--json]      one line (or JSON object) per dead letter, oldest first
  wsbridge dlq show SEQ [--json]            one dead letter: every header, its body, its redrive
  wsbridge dlq redrive [filters] [--execute] [--rate N]
                                            publish the selected ones again to their original
                                            subject; a dry run unless --execute; each dead letter
                                            is redriven at most once (recorded in WS_DLQ_REDRIVEN)

Filters: --reason, --kind, --token, --since, --until, --seq, --limit. Flags go before SEQ.`

// dlqFilter selects dead letters.
type dlqFilter struct {
	reason, kind, token string
	since, until        string
	seqs                string
	limit               int
}

func (f *dlqFilter) flags(fs *flag.FlagSet) {
	fs.StringVar(&f.reason, "reason", "", "only this Ws-Reason: permanent, gone, retries or invalid")
	fs.StringVar(&f.kind, "kind", "", "only this kind: send, close, broadcast, group, user or invalid")
	fs.StringVar(&f.token, "token", "", "only dead letters of this connection token")
	fs.StringVar(&f.since, "since", "", "only dead letters stored at or after this time: RFC 3339 (2026-10-30T08:00:00Z) or a duration ago (90m)")
	fs.StringVar(&f.until, "until", "", "only dead letters stored before this time (same forms as --since)")
	fs.StringVar(&f.seqs, "seq", "", "only these WS_DLQ sequences, comma separated")
	fs.IntVar(&f.limit, "limit", 0, "at most this many (0: all)")
}

// dlqSelection is a parsed dlqFilter.
type dlqSelection struct {
	reason       string
	filters      []string
	since, until time.Time
	seqs         map[uint64]bool
	limit        int
}

var dlqReasons = []string{"permanent", "gone", "retries", "invalid"}

var dlqKinds = []subjects.Kind{subjects.KindSend, subjects.KindClose, subjects.KindBroadcast,
	subjects.KindGroup, subjects.KindUser, subjects.KindInvalid}

// parse checks the filter and turns it into subject filters of WS_DLQ.
func (f *dlqFilter) parse(n subjects.Names, now time.Time) (dlqSelection, error) {
	s := dlqSelection{reason: f.reason, limit: f.limit}
	if f.reason != "" && !contains(dlqReasons, f.reason) {
		return s, fmt.Errorf("--reason %q: want one of %s", f.reason, strings.Join(dlqReasons, ", "))
	}
	if f.limit < 0 {
		return s, fmt.Errorf("--limit %d: want 0 (all) or more", f.limit)
	}
	kind := subjects.Kind(f.kind)
	if f.kind != "" && !contains(dlqKinds, kind) {
		return s, fmt.Errorf("--kind %q: want one of send, close, broadcast, group, user, invalid", f.kind)
	}
	if f.token != "" {
		if _, err := subjects.ConnID(f.token); err != nil {
			return s, fmt.Errorf("--token: %w", err)
		}
	}
	var err error
	if s.since, err = parseWhen(f.since, now); err != nil {
		return s, fmt.Errorf("--since: %w", err)
	}
	if s.until, err = parseWhen(f.until, now); err != nil {
		return s, fmt.Errorf("--until: %w", err)
	}
	if f.seqs != "" {
		s.seqs = map[uint64]bool{}
		for _, v := range strings.Split(f.seqs, ",") {
			seq, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil || seq == 0 {
				return s, fmt.Errorf("--seq %q: want WS_DLQ sequences (positive numbers), comma separated", v)
			}
			s.seqs[seq] = true
		}
	}
	dlq := n.DeadLetters() // P.dlq.>
	base := strings.TrimSuffix(dlq, ">")
	switch {
	case kind != "" && f.token != "":
		s.filters = []string{n.DeadLetter(kind, f.token)}
	case kind != "":
		s.filters = []string{n.DeadLetter(kind, ""), n.DeadLetter(kind, "*")}
	case f.token != "":
		s.filters = []string{base + "*." + f.token}
	default:
		s.filters = []string{dlq}
	}
	return s, nil
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// parseWhen reads an RFC 3339 time or a duration before now ("" is zero).
func parseWhen(v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time (2026-10-30T08:00:00Z) or a duration ago (90m)", v)
	}
	return now.Add(-d), nil
}

// deadLetter is one dead letter as `wsbridge dlq` prints it.
type deadLetter struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Subject  string    `json:"subject"` // in WS_DLQ
	Kind     string    `json:"kind"`
	Token    string    `json:"token,omitempty"`
	Reason   string    `json:"reason"`
	Status   string    `json:"status"`
	Attempts string    `json:"attempts"`
	Error    string    `json:"error"`
	// Original is the subject the command was published on (Ws-Subject).
	Original  string `json:"originalSubject"`
	Size      int    `json:"size"`
	Truncated string `json:"truncated,omitempty"`
	// RedrivenFrom is set on the dead letter of a command that was itself
	// redriven: the sequence of the dead letter it came from.
	RedrivenFrom string `json:"redrivenFrom,omitempty"`
	// Redriven says when this dead letter was published again.
	Redriven *redriveRecord `json:"redriven,omitempty"`
	// Headers and the body, for show.
	Headers    map[string][]string `json:"headers,omitempty"`
	Data       *string             `json:"data,omitempty"`
	DataBase64 string              `json:"dataBase64,omitempty"`

	hdr  nats.Header
	data []byte
}

// redriveRecord is the value of a dead letter's key in WS_DLQ_REDRIVEN.
type redriveRecord struct {
	At      time.Time `json:"at"`
	Subject string    `json:"subject"`          // where it was published
	OutSeq  uint64    `json:"outSeq"`           // its sequence in WS_OUT
	By      string    `json:"by,omitempty"`     // host and user that ran the command
	Stream  string    `json:"stream,omitempty"` // WS_OUT
}

func newDeadLetter(n subjects.Names, subject string, h nats.Header, data []byte, seq uint64, at time.Time) deadLetter {
	d := deadLetter{
		Seq: seq, Time: at.UTC(), Subject: subject,
		Reason: h.Get(subjects.HeaderReason), Status: h.Get(subjects.HeaderStatus),
		Attempts: h.Get(subjects.HeaderAttempts), Error: h.Get(subjects.HeaderError),
		Original: h.Get(subjects.HeaderSubject), Size: len(data),
		Truncated: h.Get(subjects.HeaderTruncated), RedrivenFrom: h.Get(subjects.HeaderRedriven),
		hdr: h, data: data,
	}
	if s, err := n.Parse(subject); err == nil {
		d.Kind, d.Token = string(s.Kind), s.Token
	} else if rest, ok := strings.CutPrefix(subject, strings.TrimSuffix(n.DeadLetters(), ">")); ok {
		d.Kind, _, _ = strings.Cut(rest, ".")
	}
	return d
}

// withBody adds the headers and the body, as text when it is UTF-8 (and
// not marked binary), else base64.
func (d *deadLetter) withBody() {
	d.Headers = map[string][]string(d.hdr)
	body := d.data
	if d.hdr.Get(subjects.HeaderDataType) != subjects.DataBinary && utf8.Valid(body) {
		s := string(body)
		d.Data = &s
	} else {
		d.DataBase64 = base64.StdEncoding.EncodeToString(body)
	}
}

// scanDLQ calls fn for every dead letter the selection picks, oldest first,
// until fn returns false. Only what WS_DLQ holds when the scan starts is
// read. wait bounds each request to NATS, not the scan: a long list takes
// as long as it takes.
func scanDLQ(ctx context.Context, js jetstream.JetStream, n subjects.Names, sel dlqSelection, wait time.Duration, fn func(deadLetter) bool) error {
	sctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	st, err := js.Stream(sctx, n.StreamDLQ())
	if err != nil {
		return fmt.Errorf("stream %s: %w", n.StreamDLQ(), err)
	}
	last := st.CachedInfo().State.LastSeq
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: sel.filters, DeliverPolicy: jetstream.DeliverAllPolicy}
	if !sel.since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &sel.since
	}
	cons, err := st.OrderedConsumer(sctx, cfg)
	if err != nil {
		return fmt.Errorf("read %s: %w", n.StreamDLQ(), err)
	}
	info, err := cons.Info(sctx)
	if err != nil {
		return fmt.Errorf("read %s: %w", n.StreamDLQ(), err)
	}
	if info.NumPending == 0 {
		return nil
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("read %s: %w", n.StreamDLQ(), err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	picked := 0
	for {
		m, err := it.Next(jetstream.NextMaxWait(wait))
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("read %s: %w", n.StreamDLQ(), ctx.Err())
			}
			return fmt.Errorf("read %s: %w", n.StreamDLQ(), err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("read %s: %w", n.StreamDLQ(), err)
		}
		seq := meta.Sequence.Stream
		if seq > last || (!sel.until.IsZero() && !meta.Timestamp.Before(sel.until)) {
			return nil
		}
		d := newDeadLetter(n, m.Subject(), m.Headers(), m.Data(), seq, meta.Timestamp)
		if (sel.reason == "" || d.Reason == sel.reason) && (sel.seqs == nil || sel.seqs[seq]) {
			picked++
			if !fn(d) || (sel.limit > 0 && picked >= sel.limit) {
				return nil
			}
		}
		if meta.NumPending == 0 || seq == last {
			return nil
		}
	}
}

// redriveBucket opens WS_DLQ_REDRIVEN; create makes it when missing, with
// WS_DLQ's max age as TTL. Without create, a missing bucket is nil: nothing
// was redriven yet.
func redriveBucket(ctx context.Context, js jetstream.JetStream, n subjects.Names, create bool) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, n.RedriveBucket())
	if err == nil || !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	if !create {
		return nil, nil
	}
	st, err := js.Stream(ctx, n.StreamDLQ())
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", n.StreamDLQ(), err)
	}
	dlq := st.CachedInfo().Config
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      n.RedriveBucket(),
		Description: "wsbridge: dead letters of " + n.StreamDLQ() + " published again, by sequence",
		History:     1,
		TTL:         dlq.MaxAge,
		Replicas:    dlq.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.KeyValue(ctx, n.RedriveBucket())
	}
	return kv, err
}

// redriven returns the records of WS_DLQ_REDRIVEN by sequence.
func redriven(ctx context.Context, kv jetstream.KeyValue) (map[uint64]*redriveRecord, error) {
	out := map[uint64]*redriveRecord{}
	if kv == nil {
		return out, nil
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	for k := range keys.Keys() {
		seq, err := strconv.ParseUint(k, 10, 64)
		if err != nil {
			continue
		}
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var r redriveRecord
		if json.Unmarshal(e.Value(), &r) == nil {
			out[seq] = &r
		}
	}
	return out, nil
}

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(stderr, "usage: wsbridge dlq%s\n", dlqUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return 0
		}
		return 2
	}
	switch args[0] {
	case "list":
		return runDLQList(ctx, args[1:], stdout, stderr)
	case "show":
		return runDLQShow(ctx, args[1:], stdout, stderr)
	case "redrive":
		return runDLQRedrive(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "wsbridge dlq: unknown subcommand %q: want list, show or redrive\n", args[0])
	return 2
}

// dlqSetup parses the flags of a dlq subcommand and connects.
func dlqSetup(name string, fs *flag.FlagSet, o *opsFlags, args []string, stderr io.Writer) (*nats.Conn, jetstream.JetStream, subjects.Names, int) {
	if err := parseFlags(fs, args, nil); err != nil {
		return nil, nil, subjects.Names{}, exitCode(err)
	}
	nc, c, err := o.client()
	if err != nil {
		return nil, nil, subjects.Names{}, fail(stderr, name, err)
	}
	return nc, c.JetStream(), c.Names(), 0
}

func runDLQList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const cmd = "dlq list"
	fs, o := newOpsFlags(cmd, " [filters]", stderr)
	var f dlqFilter
	f.flags(fs)
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	nc, js, n, code := dlqSetup(cmd, fs, o, args, stderr)
	if nc == nil {
		return code
	}
	defer nc.Close()
	if fs.NArg() > 0 {
		return wrongArgs(stderr, cmd, "no arguments (filters are flags)", fs.Args())
	}
	sel, err := f.parse(n, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "wsbridge %s: %v\n", cmd, err)
		return 2
	}
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	kv, err := redriveBucket(rctx, js, n, false)
	if err != nil {
		return fail(stderr, cmd, err)
	}
	done, err := redriven(rctx, kv)
	if err != nil {
		return fail(stderr, cmd, err)
	}
	enc := json.NewEncoder(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !*asJSON {
		fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tTOKEN\tREASON\tSTATUS\tATTEMPTS\tREDRIVEN\tERROR")
	}
	count := 0
	err = scanDLQ(ctx, js, n, sel, o.timeout, func(d deadLetter) bool {
		count++
		d.Redriven = done[d.Seq]
		if *asJSON {
			_ = enc.Encode(d)
			return true
		}
		red := "-"
		if d.Redriven != nil {
			red = "at " + d.Redriven.At.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Seq, d.Time.Format(time.RFC3339), d.Kind,
			orDash(clip(d.Token, 24)), orDash(d.Reason), orDash(d.Status), orDash(d.Attempts), red, clip(d.Error, 80))
		return true
	})
	if !*asJSON {
		tw.Flush()
	}
	if err != nil {
		return fail(stderr, cmd, err)
	}
	fmt.Fprintf(stderr, "%d dead letters\n", count)
	return 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func runDLQShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const cmd = "dlq show"
	fs, o := newOpsFlags(cmd, " SEQ", stderr)
	asJSON := fs.Bool("json", false, "print it as one JSON object")
	nc, js, n, code := dlqSetup(cmd, fs, o, args, stderr)
	if nc == nil {
		return code
	}
	defer nc.Close()
	if fs.NArg() != 1 {
		return wrongArgs(stderr, cmd, "one SEQ (a WS_DLQ sequence, as 'wsbridge dlq list' shows)", fs.Args())
	}
	seq, err := strconv.ParseUint(fs.Arg(0), 10, 64)
	if err != nil || seq == 0 {
		fmt.Fprintf(stderr, "wsbridge %s: %q is not a WS_DLQ sequence\n", cmd, fs.Arg(0))
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	st, err := js.Stream(ctx, n.StreamDLQ())
	if err != nil {
		return fail(stderr, cmd, err)
	}
	raw, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fail(stderr, cmd, fmt.Errorf("no dead letter %d in %s (deleted, aged out, or never there)", seq, n.StreamDLQ()))
	}
	if err != nil {
		return fail(stderr, cmd, err)
	}
	d := newDeadLetter(n, raw.Subject, raw.Header, raw.Data, raw.Sequence, raw.Time)
	d.withBody()
	kv, err := redriveBucket(ctx, js, n, false)
	if err != nil {
		return fail(stderr, cmd, err)
	}
	if kv != nil {
		if e, err := kv.Get(ctx, strconv.FormatUint(seq, 10)); err == nil {
			var r redriveRecord
			if json.Unmarshal(e.Value(), &r) == nil {
				d.Redriven = &r
			}
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fail(stderr, cmd, err)
		}
	}
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(d)
		return 0
	}
	fmt.Fprintf(stdout, "seq       %d\ntime      %s\nsubject   %s\nkind      %s\ntoken     %s\n", d.Seq, d.Time.Format(time.RFC3339Nano), d.Subject, d.Kind, orDash(d.Token))
	fmt.Fprintf(stdout, "original  %s\nreason    %s\nstatus    %s\nattempts  %s\nerror     %s\n", orDash(d.Original), orDash(d.Reason), orDash(d.Status), orDash(d.Attempts), orDash(d.Error))
	if d.Redriven != nil {
		fmt.Fprintf(stdout, "redriven  at %s to %s (%s sequence %d)\n", d.Redriven.At.Format(time.RFC3339), d.Redriven.Subject, d.Redriven.Stream, d.Redriven.OutSeq)
	} else {
		fmt.Fprintln(stdout, "redriven  no")
	}
	fmt.Fprintln(stdout, "headers:")
	keys := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range d.Headers[k] {
			fmt.Fprintf(stdout, "  %s: %s\n", k, v)
		}
	}
	if d.Data != nil {
		fmt.Fprintf(stdout, "body (%d bytes):\n%s\n", d.Size, *d.Data)
	} else {
		fmt.Fprintf(stdout, "body (%d bytes, base64):\n%s\n", d.Size, d.DataBase64)
	}
	return 0
}

// dropOnRedrive are the headers a dead letter adds, which the redriven
// command must not carry.
var dropOnRedrive = []string{subjects.HeaderError, subjects.HeaderAttempts, subjects.HeaderStatus,
	subjects.HeaderSubject, subjects.HeaderReason, subjects.HeaderTruncated, subjects.HeaderMsgID,
	subjects.HeaderExclude, subjects.HeaderRedriven}

// redriveTarget is where a dead letter is published again, or why it is
// not: sends and closes go to their original subject; a fan-out's dead
// letter is one connection's share of it and goes to that connection's
// send subject (a broadcast published again would reach everyone twice).
func redriveTarget(n subjects.Names, d deadLetter) (string, error) {
	switch {
	case d.Token == "":
		return "", errors.New("no connection token (an invalid command): it would be dead-lettered again")
	case d.Truncated != "":
		return "", fmt.Errorf("stored cut (%s %s): the original body is not all here", subjects.HeaderTruncated, d.Truncated)
	}
	switch subjects.Kind(d.Kind) {
	case subjects.KindSend, subjects.KindClose:
		s, err := n.Parse(d.Original)
		if err != nil || s.Dir != subjects.Out || string(s.Kind) != d.Kind || s.Token != d.Token {
			return "", fmt.Errorf("%s %q is not the %s subject of %s", subjects.HeaderSubject, d.Original, d.Kind, d.Token)
		}
		return d.Original, nil
	case subjects.KindBroadcast, subjects.KindGroup, subjects.KindUser:
		return n.Send(d.Token), nil
	}
	return "", fmt.Errorf("kind %q cannot be redriven", d.Kind)
}

// redriveMsg is the command published again from d.
func redriveMsg(n subjects.Names, d deadLetter, subject string) *nats.Msg {
	h := nats.Header{}
	for k, v := range d.hdr {
		if contains(dropOnRedrive, k) || strings.HasPrefix(k, "Ws-Orig-") {
			continue
		}
		h[k] = append([]string(nil), v...)
	}
	seq := strconv.FormatUint(d.Seq, 10)
	h.Set(subjects.HeaderRedriven, seq)
	// A redrive run twice at once is stored once (WS_OUT's duplicate window).
	h.Set(subjects.HeaderMsgID, "redrive-"+n.StreamDLQ()+"-"+seq)
	return &nats.Msg{Subject: subject, Header: h, Data: d.data}
}

func runDLQRedrive(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const cmd = "dlq redrive"
	fs, o := newOpsFlags(cmd, " [filters] [--execute]", stderr)
	var f dlqFilter
	f.flags(fs)
	execute := fs.Bool("execute", false, "publish them (without it: a dry run that says what would be published)")
	perSecond := fs.Float64("rate", 10, "dead letters published per second at most")
	all := fs.Bool("all", false, "allow a redrive with no filter at all")
	nc, js, n, code := dlqSetup(cmd, fs, o, args, stderr)
	if nc == nil {
		return code
	}
	defer nc.Close()
	if fs.NArg() > 0 {
		return wrongArgs(stderr, cmd, "no arguments (filters are flags)", fs.Args())
	}
	if *perSecond <= 0 {
		fmt.Fprintf(stderr, "wsbridge %s: --rate %v: want more than 0\n", cmd, *perSecond)
		return 2
	}
	if f == (dlqFilter{}) && !*all {
		fmt.Fprintf(stderr, "wsbridge %s: no filter: give --reason, --kind, --token, --since, --until or --seq (or --all to redrive every dead letter)\n", cmd)
		return 2
	}
	sel, err := f.parse(n, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "wsbridge %s: %v\n", cmd, err)
		return 2
	}
	// Each request to NATS is bounded by --timeout, not the whole run.
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	kv, err := redriveBucket(rctx, js, n, *execute)
	if err != nil {
		return fail(stderr, cmd, fmt.Errorf("bucket %s: %w", n.RedriveBucket(), err))
	}
	done, err := redriven(rctx, kv)
	if err != nil {
		return fail(stderr, cmd, err)
	}
	var picked []deadLetter
	if err := scanDLQ(ctx, js, n, sel, o.timeout, func(d deadLetter) bool {
		picked = append(picked, d)
		return true
	}); err != nil {
		return fail(stderr, cmd, err)
	}
	by := redriver()
	lim := rate.NewLimiter(rate.Limit(*perSecond), 1)
	var published, skipped, failed int
	for _, d := range picked {
		if r := done[d.Seq]; r != nil {
			fmt.Fprintf(stdout, "skip     %d: redriven at %s to %s\n", d.Seq, r.At.Format(time.RFC3339), r.Subject)
			skipped++
			continue
		}
		subject, err := redriveTarget(n, d)
		if err != nil {
			fmt.Fprintf(stdout, "skip     %d: %v\n", d.Seq, err)
			skipped++
			continue
		}
		if !*execute {
			fmt.Fprintf(stdout, "would    %d: %s %s -> %s (%d bytes)\n", d.Seq, d.Kind, orDash(d.Reason), subject, d.Size)
			published++
			continue
		}
		if err := lim.Wait(ctx); err != nil {
			return fail(stderr, cmd, err)
		}
		r, err := redriveOne(ctx, js, kv, n, d, subject, by, o.timeout)
		switch {
		case errors.Is(err, jetstream.ErrKeyExists):
			fmt.Fprintf(stdout, "skip     %d: redriven meanwhile by another run\n", d.Seq)
			skipped++
		case err != nil:
			fmt.Fprintf(stdout, "FAILED   %d: %v\n", d.Seq, err)
			failed++
		default:
			fmt.Fprintf(stdout, "redriven %d: %s -> %s (%s sequence %d)\n", d.Seq, d.Kind, r.Subject, r.Stream, r.OutSeq)
			published++
		}
	}
	verb := "redriven"
	if !*execute {
		verb = "would be redriven (dry run: add --execute to publish)"
	}
	fmt.Fprintf(stderr, "%d selected: %d %s, %d skipped, %d failed\n", len(picked), published, verb, skipped, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// redriveOne publishes d again to subject and records it. A record made
// meanwhile by another run wins (jetstream.ErrKeyExists): the publish it
// raced with carried the same Nats-Msg-Id and was stored once.
func redriveOne(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, n subjects.Names, d deadLetter, subject, by string, timeout time.Duration) (*redriveRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	key := strconv.FormatUint(d.Seq, 10)
	if _, err := kv.Get(ctx, key); err == nil {
		return nil, jetstream.ErrKeyExists
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, err
	}
	ack, err := js.PublishMsg(ctx, redriveMsg(n, d, subject), jetstream.WithExpectStream(n.StreamOut()))
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", subject, err)
	}
	r := &redriveRecord{At: time.Now().UTC(), Subject: subject, OutSeq: ack.Sequence, By: by, Stream: ack.Stream}
	b, _ := json.Marshal(r)
	if _, err := kv.Create(ctx, key, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil, err
		}
		return nil, fmt.Errorf("published to %s (%s sequence %d) but not recorded in %s: %w; a redrive run again within %s's duplicate window (2m by default) is de-duplicated",
			subject, ack.Stream, ack.Sequence, n.RedriveBucket(), err, n.StreamOut())
	}
	return r, nil
}

// redriver names who ran the command: user@host.
func redriver() string {
	host, _ := os.Hostname()
	user := os.Getenv("USER")
	if user == "" {
		return host
	}
	return user + "@" + host
}
