package bridge

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/wsbridge/wsbridge/subjects"
)

// FuzzOutbound drives the outbound path's decision (subject, headers and
// body → push or dead letter) with arbitrary input and checks that no input
// makes the bridge build a subject or message NATS would refuse: every
// subject built from an accepted message is a valid NATS subject well below
// the server's max_control_line, and its dead letter fits in max_payload.
func FuzzOutbound(f *testing.F) {
	names := subjects.MustNew("ws")
	tok := subjects.Token("kGcK4x/+Vf1e7aT3Nd2u1A==")
	for _, seed := range []struct{ subject, headers, body string }{
		{names.Send(tok), "", "hello"},
		{names.Send(tok), "Ws-Data-Type: binary", "\x00\xff"},
		{names.Close(tok), "", ""},
		{names.Broadcast(), "Ws-Exclude: " + tok + ",x", "all"},
		{names.Group("room1"), "", "g"},
		{names.User("alice"), "Ws-Data-Type: utf16", "u"},
		{names.Send(strings.Repeat("A", 4000)), "", "x"},
		{"ws.out.send.a.b", "", "x"},
		{"ws.in.message." + tok, "", "x"},
		{names.Send(tok), "", "\xff\xfe"},
	} {
		f.Add(seed.subject, seed.headers, []byte(seed.body))
	}
	const maxPayload = 1 << 20
	f.Fuzz(func(t *testing.T, subject, headers string, body []byte) {
		h := nats.Header{}
		for _, line := range strings.Split(headers, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
		subj, _, err := parseOutbound(names, subject, h, body)
		kind, token := subjects.KindInvalid, ""
		if subj.Dir == subjects.Out {
			kind, token = subj.Kind, subj.Token
		} else if err == nil {
			t.Fatalf("%q accepted with direction %q", subject, subj.Dir)
		}
		if err == nil {
			if _, cerr := subjects.ConnID(subj.Token); subj.Token != "" && cerr != nil {
				t.Fatalf("accepted token %q does not decode: %v", subj.Token, cerr)
			}
			switch subj.Kind {
			case subjects.KindSend, subjects.KindClose:
				if subj.Token == "" {
					t.Fatalf("%s without a token accepted", subj.Kind)
				}
			case subjects.KindGroup, subjects.KindUser:
				if subjects.ValidName(subj.Name) != nil {
					t.Fatalf("bad name %q accepted", subj.Name)
				}
			}
		}
		// What the bridge may build from this message, accepted or not.
		built := []string{names.DeadLetter(kind, token)}
		if token != "" {
			built = append(built, names.Disconnect(token), "$KV."+names.Bucket()+"."+token)
		}
		if subj.Name != "" {
			built = append(built, names.Group(subj.Name))
		}
		for _, s := range built {
			if len(s) > 1024 || !validSubject(s) {
				t.Fatalf("built subject %q (%d bytes) from %q", s, len(s), subject)
			}
		}
		meta := nats.Header{}
		meta.Set(subjects.HeaderSubject, subject)
		if err != nil {
			meta.Set(subjects.HeaderError, clipString(err.Error(), 512))
		}
		dl := deadLetterMsg(built[0], body, h, meta, maxPayload)
		if n := len(dl.Data) + headerSize(dl.Header); n > maxPayload && dl.Header.Get(subjects.HeaderTruncated) == "" {
			t.Fatalf("dead letter of %d bytes, not truncated", n)
		}
	})
}

// validSubject is NATS' rule for a subject a client may publish to: dot
// separated non-empty tokens without white space or control bytes.
func validSubject(s string) bool {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}
