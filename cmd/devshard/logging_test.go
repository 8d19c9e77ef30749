package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Both daemons build their logger from --log-format and --log-level.
func TestDaemonsRefuseAnUnknownLogFormat(t *testing.T) {
	t.Parallel()
	for _, daemon := range []string{"host", "gateway"} {
		t.Run(daemon, func(t *testing.T) {
			t.Parallel()
			_, err := runStatus(t, daemon, "--home", t.TempDir(), "--log-format", "xml")
			require.ErrorContains(t, err, `log.format is "xml"; expected json or text`)
			_, err = runStatus(t, daemon, "--home", t.TempDir(), "--log-level", "loud")
			require.ErrorContains(t, err, `log.level is "loud"; expected debug, info, warn or error`)
		})
	}
}

// With --log-format json every line a daemon writes is a JSON object.
func TestHostLogsJSONLines(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	_, err := runStatus(t, "host", "init", "--home", home)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	root := newRootCommand()
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&stderr)
	root.SetArgs([]string{"host", "--home", home, "--config", home + "/host.toml", "--listen", freeAddr(t),
		"--chain-grpc", "127.0.0.1:1", "--chain-rpc", "http://127.0.0.1:1", "--log-format", "json", "--log-level", "debug"})
	_ = root.ExecuteContext(ctx) // it cannot reach a chain; what it logged on the way is what counts

	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	var logged int
	for _, line := range lines {
		if strings.HasPrefix(line, "Error:") || strings.HasPrefix(line, "Usage:") || line == "" {
			continue // cobra's own report of the error, not the log
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "not a JSON line: %q\nall:\n%s", line, stderr.String())
		require.Contains(t, rec, "level")
		logged++
	}
	require.Positive(t, logged, "the host logged nothing:\n%s", stderr.String())
}
