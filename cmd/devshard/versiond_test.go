package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/versiond"
)

func TestVersiondParseFlag(t *testing.T) {
	t.Parallel()
	sha := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	v, err := parseVersionFlag("name=v3,url=https://dl.example/v3,sha256=" + sha)
	require.NoError(t, err)
	require.Equal(t, versiond.Version{Name: "v3", URL: "https://dl.example/v3", SHA256: sha}, v)

	for _, tc := range []struct{ in, want string }{
		{"name=v3,url=https://dl.example/v3", "sha256 \"\" must be 64 lowercase hex digits"},
		{"name=v3,sha256=" + sha, "has no url"},
		{"name=../x,url=https://dl.example/v3,sha256=" + sha, "version name \"../x\""},
		{"name=v3,url=https://dl.example/v3,sha=" + sha, "unknown key \"sha\""},
		{"v3", "is not key=value"},
	} {
		_, err := parseVersionFlag(tc.in)
		require.ErrorContains(t, err, tc.want, tc.in)
	}
}

func TestVersiondCommandRegistered(t *testing.T) {
	t.Parallel()
	cmd, _, err := newRootCommand().Find([]string{"versiond"})
	require.NoError(t, err)
	require.Equal(t, "versiond", cmd.Name())
}

// The command serves the runtime config and the metrics on its address,
// and returns cleanly when it is stopped.
func TestVersiondCommandServes(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() {
		ran <- runVersiond(ctx, versiondFlags{dir: t.TempDir(), listen: addr, command: "{binary}", drain: time.Second, maxDownload: 1 << 20}, slog.New(slog.DiscardHandler))
	}()
	var body []byte
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/devshard/runtime")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK
	}, 5*time.Second, 20*time.Millisecond)
	require.JSONEq(t, `{"revision": 1, "preferred": "", "versions": []}`, string(body))
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(metrics), "devshard_versiond_versions")
	cancel()
	require.NoError(t, <-ran)
}
