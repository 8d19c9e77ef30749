package settings

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Log is how a daemon writes its log: the format of each line and the
// least severe level written.
type Log struct {
	Format string // json or text
	Level  string // debug, info, warn or error
}

// Logging declares log.format and log.level on s, bound to l: every
// daemon takes the same two (--log-format, --log-level).
func Logging(s *Schema, l *Log) {
	s.String(&l.Format, "log.format", "text", "log lines as text (key=value) or json (one object a line)")
	s.String(&l.Level, "log.level", "info", "least severe log level written: debug, info, warn or error")
}

// Logger builds the logger l describes, writing to w.
func (l Log) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	switch strings.ToLower(l.Level) {
	case "debug":
		level = slog.LevelDebug
	case "info", "":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return nil, fmt.Errorf("log.level is %q; expected debug, info, warn or error", l.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(l.Format) {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format is %q; expected json or text", l.Format)
}
