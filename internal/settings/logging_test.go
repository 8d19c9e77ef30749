package settings

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

// loggingFrom declares the logging settings on a fresh schema and loads
// them from args.
func loggingFrom(t *testing.T, args ...string) Log {
	t.Helper()
	var l Log
	s := New("test")
	Logging(s, &l)
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	s.AddFlags(fs)
	require.NoError(t, fs.Parse(args))
	require.NoError(t, s.Load("", func(string) (string, bool) { return "", false }, &bytes.Buffer{}))
	return l
}

func TestLogJSONWritesOneObjectPerLine(t *testing.T) {
	t.Parallel()
	l := loggingFrom(t, "--log-format", "json")
	var out bytes.Buffer
	log, err := l.Logger(&out)
	require.NoError(t, err)
	log.Info("escrow created", "escrow", 7)
	log.Warn("retrying", "attempt", 2)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2)
	for _, line := range lines {
		var obj map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &obj), "line %q is not JSON", line)
		require.Contains(t, obj, "msg")
	}
	var first map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &first))
	require.Equal(t, "escrow created", first["msg"])
	require.EqualValues(t, 7, first["escrow"])
}

func TestLogLevelFilters(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		level string
		want  []string
	}{
		{"debug", []string{"d", "i", "w", "e"}},
		{"info", []string{"i", "w", "e"}},
		{"warn", []string{"w", "e"}},
		{"error", []string{"e"}},
	} {
		t.Run(tc.level, func(t *testing.T) {
			l := loggingFrom(t, "--log-level", tc.level)
			var out bytes.Buffer
			log, err := l.Logger(&out)
			require.NoError(t, err)
			log.Debug("d")
			log.Info("i")
			log.Warn("w")
			log.Error("e")
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				require.False(t, json.Valid([]byte(line)), "the default format is text, got %q", line)
				got = append(got, line[strings.Index(line, "msg=")+4:])
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestLogRefusesUnknownValues(t *testing.T) {
	t.Parallel()
	_, err := Log{Format: "xml", Level: "info"}.Logger(&bytes.Buffer{})
	require.ErrorContains(t, err, `log.format is "xml"; expected json or text`)
	_, err = Log{Format: "text", Level: "loud"}.Logger(&bytes.Buffer{})
	require.ErrorContains(t, err, `log.level is "loud"; expected debug, info, warn or error`)
}
