package subjects

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestTokenAndNameLimits(t *testing.T) {
	maxID := strings.Repeat("i", MaxConnIDLen)
	if tok := Token(maxID); len(tok) != MaxTokenLen {
		t.Fatalf("token of a %d-byte id is %d bytes, MaxTokenLen %d", MaxConnIDLen, len(tok), MaxTokenLen)
	}
	if id, err := ConnID(Token(maxID)); err != nil || id != maxID {
		t.Errorf("token at the limit: %v", err)
	}
	// One past: a token of 343 characters would still decode.
	if _, err := ConnID(Token(maxID) + "A"); !errors.Is(err, ErrBadToken) || !strings.Contains(err.Error(), "limit") {
		t.Errorf("token past the limit: %v", err)
	}
	if _, err := ConnID(strings.Repeat("A", 4060)); err == nil {
		t.Error("a 4,060-byte token was accepted")
	}
	if err := CheckConnID(maxID); err != nil {
		t.Errorf("id at the limit: %v", err)
	}
	if err := CheckConnID(maxID + "i"); err == nil {
		t.Error("id past the limit accepted")
	}
	if err := ValidName(strings.Repeat("n", MaxNameLen)); err != nil {
		t.Errorf("name at the limit: %v", err)
	}
	if err := ValidName(strings.Repeat("n", MaxNameLen+1)); !errors.Is(err, ErrBadName) {
		t.Errorf("name past the limit: %v", err)
	}
	if _, err := New(strings.Repeat("p", MaxPrefixLen)); err != nil {
		t.Errorf("prefix at the limit: %v", err)
	}
	if _, err := New(strings.Repeat("p", MaxPrefixLen+1)); err == nil {
		t.Error("prefix past the limit accepted")
	}
	// The longest subjects built from input stay far below the server's
	// 4 KiB max_control_line.
	n := MustNew(strings.Repeat("p", MaxPrefixLen))
	tok := Token(maxID)
	for _, s := range []string{n.DeadLetter(KindBroadcast, tok), n.Disconnect(tok), n.Group(strings.Repeat("g", MaxNameLen)),
		"$KV." + n.Bucket() + "." + tok} {
		if len(s) > 512 {
			t.Errorf("subject of %d bytes: %s", len(s), s)
		}
	}
}

func TestGroupsIsASet(t *testing.T) {
	got, err := Groups([]string{"a", "b", "a", "c", "b"})
	if err != nil || strings.Join(got, ",") != "a,b,c" {
		t.Errorf("Groups = %v, %v", got, err)
	}
	many := make([]string, MaxGroups)
	for i := range many {
		many[i] = fmt.Sprintf("g%d", i)
	}
	if got, err := Groups(append(many, many...)); err != nil || len(got) != MaxGroups {
		t.Errorf("%d distinct groups (twice each): %d, %v", MaxGroups, len(got), err)
	}
	if _, err := Groups(append(many, "one-more")); !errors.Is(err, ErrTooManyGroups) {
		t.Errorf("past the limit: %v", err)
	}
	if _, err := Groups([]string{"ok", "a.b"}); !errors.Is(err, ErrBadName) {
		t.Errorf("bad name: %v", err)
	}
}

func TestDisconnectMsg(t *testing.T) {
	n := MustNew("ws")
	tok := Token("c+1=")
	m, err := n.DisconnectMsg(tok, ReasonClosed, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != n.Disconnect(tok) || m.Header.Get(HeaderMsgID) != DisconnectMsgID(tok) || m.Header.Get(HeaderConnID) != "c+1=" ||
		!strings.Contains(string(m.Data), `"reason":"closed"`) {
		t.Errorf("message %s %v %s", m.Subject, m.Header, m.Data)
	}
	if _, err := n.DisconnectMsg(strings.Repeat("A", 4000), ReasonGone, time.Now()); err == nil {
		t.Error("an over-long token made a disconnect message")
	}
}
