package subjects

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// MinServerVersion is the oldest NATS server wsbridge runs on. WS_OUT stores
// each command under its partition with a stream subject transform
// ({{partition(n,…)}}) and each partition's fan-out consumer has several
// filter subjects: both came with nats-server 2.10.
const MinServerVersion = "2.10.0"

// ExpiryMarkersVersion is the first NATS server whose KV buckets leave a
// marker when a record ages out (LimitMarkerTTL); on older servers an
// expired registry record is not announced (disconnect reason "expired").
const ExpiryMarkersVersion = "2.11.0"

// ErrServerTooOld reports a NATS server older than MinServerVersion.
var ErrServerTooOld = errors.New("NATS server too old")

// CheckServerVersion returns an error, one line naming the server's version
// and the one needed, when the server nc is connected to is older than
// MinServerVersion (or says no version).
func CheckServerVersion(nc *nats.Conn) error {
	v := nc.ConnectedServerVersion()
	if VersionAtLeast(v, MinServerVersion) {
		return nil
	}
	if v == "" {
		v = "unknown"
	}
	return fmt.Errorf("%w: %s runs nats-server %s; wsbridge needs %s or newer (stream subject transforms, consumers with several filter subjects; %s or newer also announces expired registry records), see docs/NATS.md",
		ErrServerTooOld, RedactURL(nc.ConnectedUrl()), v, MinServerVersion, ExpiryMarkersVersion)
}

// VersionAtLeast reports whether the server version v (major.minor.patch,
// optionally with a -prerelease or +build suffix) is at least min. A
// pre-release counts as the version it leads to, so 2.10.0-beta.1 passes for
// 2.10.0: the features arrive during its betas. A version that does not
// parse is not at least anything.
func VersionAtLeast(v, min string) bool {
	a, ok := parseVersion(v)
	b, okMin := parseVersion(min)
	if !ok || !okMin {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return true
}

func parseVersion(v string) ([3]int, bool) {
	var out [3]int
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return out, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, false
		}
		out[i] = n
	}
	return out, true
}
