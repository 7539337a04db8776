package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbridge/wsbridge/subjects"
)

// defaultOpsURL is where `wsbridge dev` serves NATS, so the operator commands
// work against it with no configuration.
const defaultOpsURL = "nats://127.0.0.1:4222"

// opsFlags are the flags every operator command shares.
type opsFlags struct {
	conn    subjects.ConnOptions
	prefix  string
	timeout time.Duration
}

func newOpsFlags(name, synopsis string, stderr io.Writer) (*flag.FlagSet, *opsFlags) {
	fs := newFlagSet(name, synopsis, stderr)
	o := &opsFlags{conn: subjects.ConnOptions{URL: defaultOpsURL}, prefix: subjects.DefaultPrefix}
	connFlags(fs, &o.conn)
	fs.StringVar(&o.prefix, "prefix", o.prefix, "subject prefix")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "how long to wait for NATS")
	return fs, o
}

// client connects and returns a subjects.Client; the caller closes nc.
func (o *opsFlags) client() (*nats.Conn, *subjects.Client, error) {
	o.conn.Name = "wsbridge-cli"
	nc, err := o.conn.Connect(nats.MaxReconnects(0), nats.Timeout(o.timeout))
	if err != nil {
		return nil, nil, err
	}
	c, err := subjects.NewClient(nc, o.prefix)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, c, nil
}

// publish connects, runs one publishing step within the timeout, and prints
// what it queued: the body shared by send, close and broadcast. token is
// the connection a send or close is for ("" for a fan-out).
func (o *opsFlags) publish(ctx context.Context, cmd, token string, stdout, stderr io.Writer, step func(context.Context, *subjects.Client) (string, error)) int {
	nc, c, err := o.client()
	if err != nil {
		return fail(stderr, cmd, err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	what, err := step(ctx, c)
	if err != nil {
		return fail(stderr, cmd, err)
	}
	fmt.Fprintln(stdout, "queued", what)
	if token != "" {
		warnUnregistered(ctx, nc, c.Names(), cmd, token, stderr)
	}
	return 0
}

// warnUnregistered tells the operator when a send or close went to a token
// the registry does not hold: a typo, or a connection already gone. The
// command is queued all the same (the registry may lag a connect by a
// moment); the bridge dead-letters it when the gateway answers gone.
func warnUnregistered(ctx context.Context, nc *nats.Conn, names subjects.Names, cmd, token string, stderr io.Writer) {
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	kv, err := js.KeyValue(ctx, names.Bucket())
	if err != nil {
		return
	}
	if _, err := kv.Get(ctx, token); errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		fmt.Fprintf(stderr, "wsbridge %s: warning: no connection %s in the registry %s (not connected, or already gone; 'wsbridge conns' lists them): the gateway will answer gone and the bridge dead-letters it on %s\n",
			cmd, token, names.Bucket(), names.DeadLetters())
	}
}

// wrongArgs reports missing or extra arguments in one line instead of the
// whole usage.
func wrongArgs(stderr io.Writer, cmd, want string, got []string) int {
	fmt.Fprintf(stderr, "wsbridge %s: want %s, got %d argument(s); see 'wsbridge %s --help'\n", cmd, want, len(got), cmd)
	return 2
}

// sendOptions are the options of the --binary and --exclude flags.
func sendOptions(binary bool, exclude string) []subjects.SendOption {
	var opts []subjects.SendOption
	if binary {
		opts = append(opts, subjects.Binary())
	}
	if exclude != "" {
		opts = append(opts, subjects.Exclude(strings.Split(exclude, ",")...))
	}
	return opts
}

// tokenArg accepts a connection token, or with byID a raw secConnectionID.
func tokenArg(arg string, byID bool) (string, error) {
	if byID {
		if err := subjects.CheckConnID(arg); err != nil {
			return "", err
		}
		return subjects.Token(arg), nil
	}
	if _, err := subjects.ConnID(arg); err != nil {
		return "", fmt.Errorf("%w (pass --id to give a raw secConnectionID)", err)
	}
	return arg, nil
}

// messageArg is the message argument, or standard input when it is "-".
func messageArg(arg string, stdin io.Reader) ([]byte, error) {
	if arg == "-" {
		return io.ReadAll(stdin)
	}
	return []byte(arg), nil
}

func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "wsbridge %s: %v\n", cmd, err)
	return 1
}

func runSend(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newOpsFlags("send", " TOKEN MESSAGE|-", stderr)
	binary := fs.Bool("binary", false, "send a binary frame")
	byID := fs.Bool("id", false, "TOKEN is a raw secConnectionID")
	if err := parseFlags(fs, args, nil); err != nil {
		return exitCode(err)
	}
	if fs.NArg() != 2 {
		return wrongArgs(stderr, "send", "TOKEN and MESSAGE (- reads it from standard input)", fs.Args())
	}
	tok, err := tokenArg(fs.Arg(0), *byID)
	if err != nil {
		return fail(stderr, "send", err)
	}
	data, err := messageArg(fs.Arg(1), os.Stdin)
	if err != nil {
		return fail(stderr, "send", err)
	}
	return o.publish(ctx, "send", tok, stdout, stderr, func(ctx context.Context, c *subjects.Client) (string, error) {
		return fmt.Sprintf("%d bytes on %s", len(data), c.Names().Send(tok)), c.Send(ctx, tok, data, sendOptions(*binary, "")...)
	})
}

func runClose(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newOpsFlags("close", " TOKEN", stderr)
	byID := fs.Bool("id", false, "TOKEN is a raw secConnectionID")
	if err := parseFlags(fs, args, nil); err != nil {
		return exitCode(err)
	}
	if fs.NArg() != 1 {
		return wrongArgs(stderr, "close", "one TOKEN", fs.Args())
	}
	tok, err := tokenArg(fs.Arg(0), *byID)
	if err != nil {
		return fail(stderr, "close", err)
	}
	return o.publish(ctx, "close", tok, stdout, stderr, func(ctx context.Context, c *subjects.Client) (string, error) {
		return "close on " + c.Names().Close(tok), c.Close(ctx, tok)
	})
}

func runBroadcast(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newOpsFlags("broadcast", " MESSAGE|-", stderr)
	binary := fs.Bool("binary", false, "send a binary frame")
	group := fs.String("group", "", "send only to this group")
	user := fs.String("user", "", "send only to this user's connections")
	exclude := fs.String("exclude", "", "connection tokens to skip, comma separated")
	if err := parseFlags(fs, args, nil); err != nil {
		return exitCode(err)
	}
	if *group != "" && *user != "" {
		fmt.Fprintln(stderr, "wsbridge broadcast: give --group or --user, not both")
		return 2
	}
	if fs.NArg() != 1 {
		return wrongArgs(stderr, "broadcast", "one MESSAGE (- reads it from standard input)", fs.Args())
	}
	data, err := messageArg(fs.Arg(0), os.Stdin)
	if err != nil {
		return fail(stderr, "broadcast", err)
	}
	opts := sendOptions(*binary, *exclude)
	return o.publish(ctx, "broadcast", "", stdout, stderr, func(ctx context.Context, c *subjects.Client) (string, error) {
		what := fmt.Sprintf("%d bytes on ", len(data))
		switch {
		case *group != "":
			return what + c.Names().Group(*group), c.SendGroup(ctx, *group, data, opts...)
		case *user != "":
			return what + c.Names().User(*user), c.SendUser(ctx, *user, data, opts...)
		}
		return what + c.Names().Broadcast(), c.Broadcast(ctx, data, opts...)
	})
}

// tailLine is one line of `wsbridge tail --json`.
type tailLine struct {
	Subject string            `json:"subject"`
	Kind    string            `json:"kind"`
	Token   string            `json:"token,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Data    string            `json:"data,omitempty"`
	Error   string            `json:"error,omitempty"`
}

func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newOpsFlags("tail", "", stderr)
	dlq := fs.Bool("dlq", false, "also print dead letters")
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	count := fs.Int("count", 0, "exit after this many lines (0: run until interrupted)")
	if err := parseFlags(fs, args, nil); err != nil {
		return exitCode(err)
	}
	nc, c, err := o.client()
	if err != nil {
		return fail(stderr, "tail", err)
	}
	defer nc.Close()
	n := c.Names()
	lines := make(chan tailLine, 256)
	handle := func(m *nats.Msg) {
		l := tailLine{Subject: m.Subject, Headers: map[string]string{}}
		for k := range m.Header {
			l.Headers[k] = m.Header.Get(k)
		}
		if s, err := n.Parse(m.Subject); err != nil {
			l.Error = err.Error()
		} else {
			l.Kind, l.Token = string(s.Dir)+"."+string(s.Kind), s.Token
		}
		if m.Header.Get(subjects.HeaderDataType) == subjects.DataBinary {
			l.Data = fmt.Sprintf("<%d bytes binary>", len(m.Data))
		} else {
			l.Data = string(m.Data)
		}
		select {
		case lines <- l:
		case <-ctx.Done():
		}
	}
	subs := []string{n.Inbound()}
	if *dlq {
		subs = append(subs, n.DeadLetters())
	}
	for _, s := range subs {
		sub, err := nc.Subscribe(s, handle)
		if err != nil {
			return fail(stderr, "tail", err)
		}
		defer sub.Unsubscribe()
	}
	if err := nc.Flush(); err != nil {
		return fail(stderr, "tail", err)
	}
	fmt.Fprintf(stderr, "listening on %s\n", strings.Join(subs, " "))
	enc := json.NewEncoder(stdout)
	for printed := 0; *count == 0 || printed < *count; printed++ {
		select {
		case <-ctx.Done():
			return 0
		case l := <-lines:
			if *asJSON {
				_ = enc.Encode(l)
				continue
			}
			extra := ""
			if e := l.Headers[subjects.HeaderError]; e != "" {
				extra = " error=" + e
			}
			if l.Error != "" {
				extra = " (" + l.Error + ")"
			}
			fmt.Fprintf(stdout, "%s %s %s%s\n", l.Kind, l.Token, l.Data, extra)
		}
	}
	return 0
}

func runConns(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newOpsFlags("conns", "", stderr)
	group := fs.String("group", "", "only connections in this group")
	user := fs.String("user", "", "only connections of this user")
	limit := fs.Int("limit", 0, "at most this many (0: all)")
	asJSON := fs.Bool("json", false, "print the JSON reply")
	if err := parseFlags(fs, args, nil); err != nil {
		return exitCode(err)
	}
	nc, c, err := o.client()
	if err != nil {
		return fail(stderr, "conns", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req := subjects.ConnListRequest{Group: *group, User: *user, Limit: *limit}
	reply, err := listConns(ctx, nc, c, req)
	if err != nil {
		return fail(stderr, "conns", err)
	}
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(reply)
		return 0
	}
	for _, ce := range reply.Connections {
		fmt.Fprintf(stdout, "%s\tuser=%s\tgroups=%s\tsince=%s\tip=%s\n", ce.Token, ce.UserID,
			strings.Join(ce.Groups, ","), ce.ConnectedAt.Format(time.RFC3339), ce.SourceIP)
	}
	fmt.Fprintf(stderr, "%d of %d connections\n", len(reply.Connections), reply.Total)
	return 0
}

// listConns asks the bridge (P.api.conn.list); with no bridge running it
// reads the registry bucket itself, so the command works on its own.
func listConns(ctx context.Context, nc *nats.Conn, c *subjects.Client, req subjects.ConnListRequest) (subjects.ConnListReply, error) {
	var reply subjects.ConnListReply
	body, _ := json.Marshal(req)
	m, err := nc.RequestWithContext(ctx, c.Names().ConnList(), body)
	if err == nil {
		var apiErr subjects.APIError
		if json.Unmarshal(m.Data, &apiErr) == nil && apiErr.Error != "" {
			return reply, fmt.Errorf("bridge: %s", apiErr.Error)
		}
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			return reply, fmt.Errorf("bridge reply: %w", err)
		}
		return reply, nil
	}
	if !errors.Is(err, nats.ErrNoResponders) {
		return reply, err
	}
	kv, err := c.JetStream().KeyValue(ctx, c.Names().Bucket())
	if err != nil {
		return reply, fmt.Errorf("no bridge answered and the registry is not readable: %w", err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return reply, err
	}
	reply.Connections = []subjects.ConnectEvent{}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return reply, err
		}
		var ce subjects.ConnectEvent
		if json.Unmarshal(e.Value(), &ce) != nil {
			continue
		}
		if (req.Group != "" && !slices.Contains(ce.Groups, req.Group)) || (req.User != "" && ce.UserID != req.User) {
			continue
		}
		reply.Total++
		if req.Limit == 0 || len(reply.Connections) < req.Limit {
			reply.Connections = append(reply.Connections, ce)
		}
	}
	return reply, nil
}
