package main

import (
	"context"
	"io"
	"log/slog"
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

// --version replaces the chain; without it the list is the chain's, read
// through a client of the --chain-* nodes, whose malformed address is an
// error that names the way around it.
func TestVersiondSource(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	sha := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	src, done, err := versionSource(versiondFlags{versions: []string{"name=v3,url=https://dl.example/v3,sha256=" + sha}, chainGRPC: "127.0.0.1:9090"}, log)
	require.NoError(t, err)
	done()
	require.Equal(t, versiond.StaticSource{{Name: "v3", URL: "https://dl.example/v3", SHA256: sha}}, src)

	src, done, err = versionSource(versiondFlags{chainGRPC: "127.0.0.1:9090", chainRPC: "http://127.0.0.1:26657", chainStallAfter: time.Minute, chainPoll: time.Second}, log)
	require.NoError(t, err)
	done()
	chain, ok := src.(versiond.ChainSource)
	require.True(t, ok, "%T", src)
	require.Equal(t, time.Minute, chain.StallAfter)
	require.Equal(t, time.Second, chain.Poll)

	_, _, err = versionSource(versiondFlags{chainGRPC: "node-without-port"}, log)
	require.ErrorContains(t, err, "or give the approved list with --version")
}

// The command serves the runtime config and the metrics on its address,
// and returns cleanly when it is stopped. Its chain node does not answer,
// so no list is applied: the config is revision 0, empty.
func TestVersiondCommandServes(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() {
		ran <- runVersiond(ctx, versiondFlags{
			dir: t.TempDir(), listen: addr, command: "{binary}", drain: time.Second, maxDownload: 1 << 20,
			chainGRPC: freeAddr(t), chainPoll: 50 * time.Millisecond,
		}, slog.New(slog.DiscardHandler))
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
	require.JSONEq(t, `{"revision": 0, "preferred": "", "versions": []}`, string(body))
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(metrics), "devshard_versiond_versions")
	cancel()
	require.NoError(t, <-ran)
}
