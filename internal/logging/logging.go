// Package logging builds the one *slog.Logger of a wsbridge process from
// its log settings: the --log-format and --log-level flags of the commands,
// WSBRIDGE_LOG_FORMAT and WSBRIDGE_LOG_LEVEL of the functions.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Defaults of the log settings.
const (
	DefaultFormat = "text"
	DefaultLevel  = "info"
)

// Flags registers --log-format and --log-level.
func Flags(fs *flag.FlagSet, format, level *string) {
	fs.StringVar(format, "log-format", DefaultFormat, "log format: text or json")
	fs.StringVar(level, "log-level", DefaultLevel, "log level: debug, info, warn or error")
}

// ParseLevel reads debug, info, warn (or warning) or error, in any case; ""
// is info.
func ParseLevel(s string) (slog.Level, error) {
	var lv slog.Level
	switch s = strings.ToLower(s); s {
	case "":
		return slog.LevelInfo, nil
	case "warning":
		return slog.LevelWarn, nil
	}
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return lv, nil
}

// CheckFormat accepts text or json, in any case; "" is text.
func CheckFormat(s string) error {
	switch strings.ToLower(s) {
	case "", "text", "json":
		return nil
	}
	return fmt.Errorf("log format %q: want text or json", s)
}

// New returns a logger writing to w in format at level.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	lv, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	if err := CheckFormat(format); err != nil {
		return nil, err
	}
	ho := &slog.HandlerOptions{Level: lv}
	if strings.EqualFold(format, "json") {
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return slog.New(slog.NewTextHandler(w, ho)), nil
}
