package subjects

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Self-hosted edge instances (`wsbridge gateway`, SPEC §6) name themselves
// in the connection ids they hand out, and advertise where bridges reach
// their push address in the KV bucket GatewayBucket (instance id -> an
// Instance as JSON), whose records age out unless refreshed. A bridge routes
// a push for a connection to the instance its id names; an id that names no
// instance (API Gateway's) goes to the bridge's --push-url.

// EdgeIDSeparator ends the instance id at the start of an edge connection
// id: "<instance>~<base64 of 16 random bytes>". It is not in the base64
// alphabet of API Gateway's ids nor in an instance id.
const EdgeIDSeparator = "~"

// MaxInstanceIDLen bounds an instance id.
const MaxInstanceIDLen = 64

// ErrBadInstanceID reports an instance id that cannot be a KV key or part of
// a connection id.
var ErrBadInstanceID = errors.New("bad gateway instance id")

// Instance is the record an edge instance keeps in GatewayBucket.
type Instance struct {
	ID        string    `json:"id"`
	PushURL   string    `json:"pushUrl"`
	StartedAt time.Time `json:"startedAt"`
}

// CheckInstanceID accepts 1 to MaxInstanceIDLen letters, digits, '-', '_'
// and '.', not starting or ending with '.' (a host name fits).
func CheckInstanceID(id string) error {
	if id == "" || len(id) > MaxInstanceIDLen {
		return fmt.Errorf("%w %q: want 1 to %d characters", ErrBadInstanceID, clip(id), MaxInstanceIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w %q: byte %q at %d (want letters, digits, '-', '_' or '.')", ErrBadInstanceID, clip(id), c, i)
		}
	}
	if strings.HasPrefix(id, ".") || strings.HasSuffix(id, ".") || strings.Contains(id, "..") {
		return fmt.Errorf("%w %q: empty dot-separated part", ErrBadInstanceID, clip(id))
	}
	return nil
}

// NewEdgeConnID returns a fresh connection id naming instance (which must
// pass CheckInstanceID).
func NewEdgeConnID(instance string) string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return instance + EdgeIDSeparator + base64.StdEncoding.EncodeToString(b[:])
}

// EdgeInstance returns the instance a connection id names, and false for an
// id that names none (API Gateway's, or a malformed one).
func EdgeInstance(connID string) (string, bool) {
	inst, rest, ok := strings.Cut(connID, EdgeIDSeparator)
	if !ok || rest == "" || CheckInstanceID(inst) != nil {
		return "", false
	}
	return inst, true
}

// GatewayBucket is the KV bucket of live edge instances.
func (n Names) GatewayBucket() string { return n.upper + "_GATEWAYS" }

// Disconnect reasons of the self-hosted edge (SPEC §6).
const (
	ReasonShutdown = "shutdown" // the edge instance holding it was stopped
	ReasonLost     = "lost"     // the edge instance holding it vanished
)

// MaxPushTokenLen bounds a push token.
const MaxPushTokenLen = 512

// CheckPushToken accepts a bearer token the bridge can send and the gateway
// compare: up to MaxPushTokenLen visible ASCII characters (no spaces); ""
// means no token.
func CheckPushToken(token string) error {
	if len(token) > MaxPushTokenLen {
		return fmt.Errorf("push token: %d bytes, more than %d", len(token), MaxPushTokenLen)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("push token: byte %d is not visible ASCII (a header value cannot carry it)", i)
		}
	}
	return nil
}
