package subjects

import (
	"errors"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		prefix                                  string
		wantErr                                 bool
		in, out, dlq, bucket, consumer, connect string
	}{
		{"", false, "WS_IN", "WS_OUT", "WS_DLQ", "WS_CONNS", "WS_BRIDGE", "ws.in.connect.YWJj"},
		{"ws", false, "WS_IN", "WS_OUT", "WS_DLQ", "WS_CONNS", "WS_BRIDGE", "ws.in.connect.YWJj"},
		{"acme.chat", false, "ACME_CHAT_IN", "ACME_CHAT_OUT", "ACME_CHAT_DLQ", "ACME_CHAT_CONNS", "ACME_CHAT_BRIDGE", "acme.chat.in.connect.YWJj"},
		{"app-1", false, "APP_1_IN", "APP_1_OUT", "APP_1_DLQ", "APP_1_CONNS", "APP_1_BRIDGE", "app-1.in.connect.YWJj"},
		{"a..b", true, "", "", "", "", "", ""},
		{"ws.*", true, "", "", "", "", "", ""},
		{"ws.>", true, "", "", "", "", "", ""},
		{"w s", true, "", "", "", "", "", ""},
		{".ws", true, "", "", "", "", "", ""},
	}
	for _, tt := range tests {
		n, err := New(tt.prefix)
		if (err != nil) != tt.wantErr {
			t.Errorf("New(%q) error = %v, wantErr %v", tt.prefix, err, tt.wantErr)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrBadName) {
				t.Errorf("New(%q) error %v is not ErrBadName", tt.prefix, err)
			}
			continue
		}
		got := []string{n.StreamIn(), n.StreamOut(), n.StreamDLQ(), n.Bucket(), n.Consumer(), n.Connect("YWJj")}
		want := []string{tt.in, tt.out, tt.dlq, tt.bucket, tt.consumer, tt.connect}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("New(%q): got %q, want %q", tt.prefix, got[i], want[i])
			}
		}
	}
}

func TestBuilders(t *testing.T) {
	n := MustNew("ws")
	tok := Token("kGcK4x/+Vf1e7aT3Nd2u1A==")
	tests := []struct{ got, want string }{
		{n.Connect(tok), "ws.in.connect." + tok},
		{n.Message(tok), "ws.in.message." + tok},
		{n.Disconnect(tok), "ws.in.disconnect." + tok},
		{n.Inbound(), "ws.in.>"},
		{n.InboundKind(KindMessage), "ws.in.message.*"},
		{n.Send(tok), "ws.out.send." + tok},
		{n.Close(tok), "ws.out.close." + tok},
		{n.Broadcast(), "ws.out.broadcast"},
		{n.Group("room1"), "ws.out.group.room1"},
		{n.User("alice"), "ws.out.user.alice"},
		{n.Outbound(), "ws.out.>"},
		{n.DeadLetter(KindSend, tok), "ws.dlq.send." + tok},
		{n.DeadLetter(KindInvalid, ""), "ws.dlq.invalid"},
		{n.DeadLetters(), "ws.dlq.>"},
		{n.AuthConnect(), "ws.auth.connect"},
		{n.ConnGet(), "ws.api.conn.get"},
		{n.ConnList(), "ws.api.conn.list"},
		{n.GroupAdd(), "ws.api.group.add"},
		{n.GroupRemove(), "ws.api.group.remove"},
		{n.APIAll(), "ws.api.>"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	n := MustNew("acme.ws")
	tok := Token("kGcK4x/+Vf1e7aT3Nd2u1A==")
	tests := []struct {
		subject string
		want    Subject
		wantErr bool
	}{
		{"acme.ws.in.connect." + tok, Subject{Dir: In, Kind: KindConnect, Token: tok}, false},
		{"acme.ws.in.message." + tok, Subject{Dir: In, Kind: KindMessage, Token: tok}, false},
		{"acme.ws.in.disconnect." + tok, Subject{Dir: In, Kind: KindDisconnect, Token: tok}, false},
		{"acme.ws.out.send." + tok, Subject{Dir: Out, Kind: KindSend, Token: tok}, false},
		{"acme.ws.out.close." + tok, Subject{Dir: Out, Kind: KindClose, Token: tok}, false},
		{"acme.ws.out.broadcast", Subject{Dir: Out, Kind: KindBroadcast}, false},
		{"acme.ws.out.group.room-1", Subject{Dir: Out, Kind: KindGroup, Name: "room-1"}, false},
		{"acme.ws.out.user.u_42", Subject{Dir: Out, Kind: KindUser, Name: "u_42"}, false},
		{"acme.ws.dlq.send." + tok, Subject{Dir: DLQ, Kind: KindSend, Token: tok}, false},
		{"acme.ws.dlq.invalid", Subject{Dir: DLQ, Kind: KindInvalid}, false},
		{"acme.ws.auth.connect", Subject{Dir: Auth, Kind: "connect"}, false},
		{"acme.ws.api.conn.get", Subject{Dir: API, Kind: "conn", Name: "get"}, false},
		{"acme.ws.api.group.remove", Subject{Dir: API, Kind: "group", Name: "remove"}, false},

		{"ws.out.send." + tok, Subject{}, true},             // other prefix
		{"acme.ws.out.send", Subject{}, true},               // no token
		{"acme.ws.out.send.a+b", Subject{}, true},           // bad token
		{"acme.ws.out.send." + tok + ".x", Subject{}, true}, // extra token
		{"acme.ws.out.broadcast.x", Subject{}, true},
		{"acme.ws.out.group", Subject{}, true},
		{"acme.ws.out.shout." + tok, Subject{}, true},
		{"acme.ws.in.typing." + tok, Subject{}, true},
		{"acme.ws.api.conn.drop", Subject{}, true},
		{"acme.ws.out", Subject{}, true},
		{"acme.ws", Subject{}, true},
		{"", Subject{}, true},
	}
	for _, tt := range tests {
		got, err := n.Parse(tt.subject)
		if (err != nil) != tt.wantErr {
			t.Errorf("Parse(%q) error = %v, wantErr %v", tt.subject, err, tt.wantErr)
			continue
		}
		if err != nil && !errors.Is(err, ErrBadSubject) {
			t.Errorf("Parse(%q) error %v is not ErrBadSubject", tt.subject, err)
		}
		if got != tt.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tt.subject, got, tt.want)
		}
	}
}

func TestParseRoundTrip(t *testing.T) {
	n := MustNew("ws")
	for _, id := range []string{"a", "kGcK4x/+Vf1e7aT3Nd2u1A==", "x.y*z>"} {
		tok := Token(id)
		for _, subj := range []string{n.Connect(tok), n.Message(tok), n.Disconnect(tok), n.Send(tok), n.Close(tok)} {
			s, err := n.Parse(subj)
			if err != nil {
				t.Fatalf("Parse(%q): %v", subj, err)
			}
			got, err := s.ConnID()
			if err != nil || got != id {
				t.Errorf("Parse(%q).ConnID() = %q, %v; want %q", subj, got, err, id)
			}
		}
	}
}

func TestValidName(t *testing.T) {
	for _, name := range []string{"room1", "user@example", "a-b_c", "中文"} {
		if err := ValidName(name); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{"", "a.b", "a*", ">", "a b", "a\tb", string(make([]byte, 300))} {
		if err := ValidName(name); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidName(%q) = %v, want ErrBadName", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	n := MustNew("ws")
	for _, s := range []string{"ws.out.send.YWJj", "ws.out.broadcast", "ws.in.>", "ws.api.conn.get", "ws..", "ws.dlq.send"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		s, err := n.Parse(subject)
		if err != nil {
			if !errors.Is(err, ErrBadSubject) {
				t.Fatalf("Parse(%q) error %v is not ErrBadSubject", subject, err)
			}
			return
		}
		// Whatever parses rebuilds to the same subject.
		var again string
		switch {
		case s.Dir == In && s.Kind == KindConnect:
			again = n.Connect(s.Token)
		case s.Dir == In && s.Kind == KindMessage:
			again = n.Message(s.Token)
		case s.Dir == In && s.Kind == KindDisconnect:
			again = n.Disconnect(s.Token)
		case s.Dir == Out && s.Kind == KindSend:
			again = n.Send(s.Token)
		case s.Dir == Out && s.Kind == KindClose:
			again = n.Close(s.Token)
		case s.Dir == Out && s.Kind == KindBroadcast:
			again = n.Broadcast()
		case s.Dir == Out && s.Kind == KindGroup:
			again = n.Group(s.Name)
		case s.Dir == Out && s.Kind == KindUser:
			again = n.User(s.Name)
		case s.Dir == DLQ:
			again = n.DeadLetter(s.Kind, s.Token)
		default:
			return
		}
		if again != subject {
			t.Fatalf("Parse(%q) = %+v rebuilds to %q", subject, s, again)
		}
	})
}
