package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/session/sessiontest"
)

// runStatus runs the devshard command args and returns what it printed.
func runStatus(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRootCommand()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestGatewayStatusPrintsTables(t *testing.T) {
	t.Parallel()
	minute := time.Date(2026, 1, 1, 12, 0, 0, 0, time.Local)
	s := gateway.Status{Address: "ab12", Version: "v1.2.3", Ready: false, Reason: "the chain node does not answer", InFlight: 2,
		Escrows: []gateway.EscrowView{{ID: 7, Epoch: 3, Status: "open", Phase: "PHASE_ACTIVE", Nonce: 41, Balance: 9_990_000, Current: true, NextExecutor: "http://h1"}},
		Hosts:   []gateway.HostStatus{{URL: "http://h1", State: "up", LatencyMS: 120, Requests: 5}, {URL: "http://h2", State: "down", Requests: 1, Failures: 1, LastError: "stalled"}},
		Minutes: []gateway.MinuteStatus{{Start: minute, Requests: 4, Errors: 1}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/status.json", r.URL.Path)
		require.NoError(t, json.NewEncoder(w).Encode(s))
	}))
	t.Cleanup(srv.Close)

	out, err := runStatus(t, "gateway", "status", "--url", srv.URL)
	require.NoError(t, err, out)
	require.Contains(t, out, "NOT READY: the chain node does not answer")
	require.Contains(t, out, "requests in flight: 2")
	require.Regexp(t, `(?m)^7\s+3\s+open\s+PHASE_ACTIVE\s+41\s+9990000\s+yes\s+http://h1$`, out)
	require.Regexp(t, `(?m)^http://h1\s+up\s+120ms\s+5\s+0\s*$`, out)
	require.Regexp(t, `(?m)^http://h2\s+down\s+0ms\s+1\s+1\s+stalled$`, out)
	require.Regexp(t, `(?m)^12:00\s+4\s+1$`, out)

	_, err = runStatus(t, "gateway", "status", "--url", "http://127.0.0.1:1")
	require.ErrorContains(t, err, "does not answer")
}

func TestHostStatusPrintsReadinessVersionAndSessions(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	e := host.New(host.Config{Key: f.Hosts[0], Executor: executor.Builtin{}, Metrics: host.NewMetrics()})
	srv := httptest.NewServer(host.Handler(e, "v9.9.9"))
	t.Cleanup(srv.Close)

	out, err := runStatus(t, "host", "status", "--url", srv.URL)
	require.NoError(t, err, out)
	require.Contains(t, out, "NOT READY: initializing")
	require.Contains(t, out, "version v9.9.9")
	require.Contains(t, out, "account "+f.Hosts[0].Address().String())

	e.MarkReady()
	out, err = runStatus(t, "host", "status", "--url", srv.URL)
	require.NoError(t, err, out)
	require.Regexp(t, regexp.MustCompile(`\bready\n`), out)
	require.Regexp(t, `(?m)^PHASE_ACTIVE\s+0$`, out)
	require.Regexp(t, `(?m)^devshard_host_storage_up\s+1$`, out)
}
