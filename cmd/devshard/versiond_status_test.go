package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/versiond"
)

// `devshard versiond status` prints each version's state, port, uptime,
// restarts and last error from GET /devshard/status, as JSON with --json,
// and passes on versiond's refusal as a sentence. The server here is a
// fake versiond answering a fixed status.
func TestVersiondStatusCommand(t *testing.T) {
	t.Parallel()
	started := time.Now().Add(-90 * time.Second)
	st := versiond.Status{Revision: 7, Preferred: "v2", Versions: []versiond.VersionStatus{
		{Name: "v2", SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", State: versiond.StateServing,
			Address: "127.0.0.1:40857", Running: true, Started: started, Restarts: 1, LastError: "version v2: child exited (exit status 3); restarting in 1s"},
		{Name: "v3", SHA256: "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210", State: versiond.StateInstalling,
			LastError: "sha256 mismatch"},
	}}
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/devshard/status", r.URL.Path)
		json.NewEncoder(w).Encode(st)
	}))
	defer fake.Close()

	run := func(args ...string) (string, error) {
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"versiond", "status"}, args...))
		err := cmd.Execute()
		return out.String(), err
	}
	out, err := run("--url", fake.URL)
	require.NoError(t, err, out)
	require.Contains(t, out, "preferred: v2")
	require.Regexp(t, `(?m)^v2\s+serving\s+40857\s+1m3\ds\s+1\s+0123456789ab\s+version v2: child exited`, out)
	require.Regexp(t, `(?m)^v3\s+installing\s+-\s+-\s+0\s+fedcba987654\s+sha256 mismatch$`, out)

	out, err = run("--url", fake.URL, "--json")
	require.NoError(t, err, out)
	var got versiond.Status
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	require.Equal(t, "v2", got.Preferred)
	require.Len(t, got.Versions, 2)

	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "GET /devshard/status answers clients on this machine only", http.StatusForbidden)
	}))
	defer refusing.Close()
	_, err = run("--url", refusing.URL)
	require.ErrorContains(t, err, "403 Forbidden: GET /devshard/status answers clients on this machine only")

	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	_, err = run("--url", gone.URL)
	require.ErrorContains(t, err, "is it running, and is --url its --listen?")
}
