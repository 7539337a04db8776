package subjects

import (
	"encoding/base64"
	"errors"
	"fmt"
	"unicode/utf8"
)

// ErrBadToken reports a connection token that is not base64url (no padding)
// of a non-empty connection id.
var ErrBadToken = errors.New("bad connection token")

// Token returns the subject token for a gateway connection id: the unpadded
// base64url encoding of secConnectionID. Gateway ids contain '+', '/' and '=',
// none of which may appear in a NATS subject token unencoded.
func Token(connID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(connID))
}

// ConnID decodes a connection token back into the gateway's secConnectionID.
func ConnID(token string) (string, error) {
	if token == "" {
		return "", fmt.Errorf("%w: empty", ErrBadToken)
	}
	if len(token) > MaxTokenLen {
		// Checked first: a subject or KV key built from a longer one could
		// pass the server's max_control_line, and the server would close
		// the connection that sent it.
		return "", fmt.Errorf("%w: %d bytes, limit %d (a connection id of at most %d bytes)", ErrBadToken, len(token), MaxTokenLen, MaxConnIDLen)
	}
	for i := 0; i < len(token); i++ {
		// The decoder skips '\r' and '\n'; a subject token must not hold them.
		if c := token[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", fmt.Errorf("%w %q: byte %q at %d is not base64url", ErrBadToken, clip(token), c, i)
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrBadToken, clip(token), err)
	}
	if len(b) == 0 {
		return "", fmt.Errorf("%w: empty connection id", ErrBadToken)
	}
	return string(b), nil
}

// clip shortens untrusted input before it is quoted in an error message.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		// Cut on a rune boundary so the message stays valid UTF-8.
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return s[:cut] + "…"
	}
	return s
}
