package subjects

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTokenRoundTrip(t *testing.T) {
	tests := []struct {
		id, token string
	}{
		{"abc", "YWJj"},
		{"a+b/c==", "YStiL2M9PQ"},
		{"kGcK4x/+Vf1e7aT3Nd2u1A==", "a0djSzR4LytWZjFlN2FUM05kMnUxQT09"},
		{"\x00\xff", "AP8"},
		{"ünïcode", "w7xuw69jb2Rl"},
	}
	for _, tt := range tests {
		got := Token(tt.id)
		if got != tt.token {
			t.Errorf("Token(%q) = %q, want %q", tt.id, got, tt.token)
		}
		back, err := ConnID(got)
		if err != nil || back != tt.id {
			t.Errorf("ConnID(%q) = %q, %v; want %q", got, back, err, tt.id)
		}
	}
}

func TestConnIDRejects(t *testing.T) {
	for _, tok := range []string{
		"",         // empty
		"YWJj=",    // padding is not used
		"a+b",      // standard alphabet
		"a/b",      // standard alphabet
		"YWJ",      // non-canonical trailing bits
		"Y",        // impossible length
		"YW.Jj",    // subject separator
		"YWJj*",    // wildcard
		"YWJj\n",   // white space
		"\xff\xfe", // not base64 at all
	} {
		if id, err := ConnID(tok); !errors.Is(err, ErrBadToken) {
			t.Errorf("ConnID(%q) = %q, %v; want ErrBadToken", tok, id, err)
		}
	}
}

func FuzzToken(f *testing.F) {
	for _, s := range []string{"", "abc", "kGcK4x/+Vf1e7aT3Nd2u1A==", "\x00", "a.b*c>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// Any id within the limit round-trips, and its token is a valid
		// subject token; a longer one's token is refused.
		if len(s) > MaxConnIDLen {
			if _, err := ConnID(Token(s)); !errors.Is(err, ErrBadToken) {
				t.Fatalf("token of a %d-byte id accepted: %v", len(s), err)
			}
		} else if s != "" {
			tok := Token(s)
			back, err := ConnID(tok)
			if err != nil || back != s {
				t.Fatalf("round trip %q -> %q -> %q, %v", s, tok, back, err)
			}
			if strings.ContainsAny(tok, ".*> \t\r\n+/=") {
				t.Fatalf("token %q of %q is not a subject token", tok, s)
			}
		}
		// Any string either decodes to an id whose token is the same string,
		// or is rejected with ErrBadToken.
		id, err := ConnID(s)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("ConnID(%q) error %v is not ErrBadToken", s, err)
			}
			if !utf8.ValidString(err.Error()) && utf8.ValidString(s) {
				t.Fatalf("error message is not valid UTF-8: %q", err.Error())
			}
			return
		}
		if Token(id) != s {
			t.Fatalf("ConnID(%q) = %q, whose token is %q", s, id, Token(id))
		}
	})
}
