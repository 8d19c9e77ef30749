package host

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store/boot"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

type daemonBundle struct {
	cfg   DaemonConfig
	chain *daemonChain
	logs  *logBuffer
	key   *signing.PrivKey
}

func setupDaemon(t *testing.T) *daemonBundle {
	t.Helper()
	key := sessiontest.New(1, sessiontest.DefaultOptions()).Hosts[0]
	b := &daemonBundle{chain: &daemonChain{id: "devshard-daemon", epoch: 2}, logs: &logBuffer{}, key: key}
	b.cfg = DaemonConfig{
		Listen: "127.0.0.1:0", Key: key, Chain: b.chain, Executor: executor.Builtin{},
		Storage: boot.Config{Mode: boot.SQLite, Dir: t.TempDir(), Getenv: func(string) string { return "" }},
		Version: "test", Logger: slog.New(slog.NewTextHandler(b.logs, nil)),
	}
	return b
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Open returns a host that serves, is ready, answers escrows from the
// chain and follows its epochs; Close stops it all.
func TestDaemonServesUntilClosed(t *testing.T) {
	t.Parallel()
	b := setupDaemon(t)
	d, err := Open(t.Context(), b.cfg)
	require.NoError(t, err)

	status, _ := get(t, d.URL()+"/readyz")
	require.Equal(t, http.StatusOK, status, "storage is open and the chain id known when Open returns")
	status, body := get(t, d.URL()+"/metrics")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "devshard_host_sessions")
	require.Equal(t, "devshard-daemon", d.Engine.ChainID())

	// An escrow the chain does not know is 404, said in the product's words.
	diff := []byte(`{"diff":"CCo="}`)
	req, err := http.NewRequest(http.MethodPost, d.URL()+"/v1/sessions/42/diffs", bytes.NewReader(diff))
	require.NoError(t, err)
	gw := sessiontest.New(2, sessiontest.DefaultOptions()).Gateway
	require.NoError(t, httpauth.Sign(req, diff, gw, httpauth.Audience{ChainID: "devshard-daemon", Host: b.key.Address()}, time.Now()))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, string(reply))
	require.Contains(t, string(reply), "the chain has no escrow 42")

	require.Eventually(t, func() bool { return strings.Contains(b.logs.String(), "msg=epoch current=2") }, 5*time.Second, 10*time.Millisecond)
	b.chain.setEpoch(3)
	require.Eventually(t, func() bool { return strings.Contains(b.logs.String(), "msg=epoch current=3") }, 5*time.Second, 10*time.Millisecond)
	logs := b.logs.String()
	require.Less(t, strings.Index(logs, `msg="host listening"`), strings.Index(logs, `msg="storage ready"`), "the API binds before storage opens")
	require.Contains(t, logs, "account=acct"+b.key.Address().String())
	require.Contains(t, logs, "rewards are not claimed automatically", "no sender says why")

	require.NoError(t, d.Close(context.Background()))
	require.ErrorIs(t, <-d.Served(), http.ErrServerClosed)
	_, err = http.Get(d.URL() + "/healthz")
	require.Error(t, err, "the listener is closed")
}

// A failed Open says which step failed and gives back the address.
func TestDaemonOpenFailureReleasesTheListener(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(b *daemonBundle)
		want  string
	}{
		{"storage", func(b *daemonBundle) { b.cfg.Storage.Mode = boot.Postgres }, "open storage: store mode postgres needs Postgres"},
		{"chain", func(b *daemonBundle) { b.chain.idErr = errors.New("node down") }, "stopped while waiting for the chain (chain unreachable at the configured node: node down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupDaemon(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			b.cfg.Listen = ln.Addr().String()
			require.NoError(t, ln.Close())
			tc.setup(b)
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			_, err = Open(ctx, b.cfg)
			require.ErrorContains(t, err, tc.want)
			ln, err = net.Listen("tcp", b.cfg.Listen)
			require.NoError(t, err, "the address is free again")
			require.NoError(t, ln.Close())
		})
	}
}

// A daemon given a sender claims the account's rewards at epoch changes.
func TestDaemonClaimsWithASender(t *testing.T) {
	t.Parallel()
	b := setupDaemon(t)
	send := &fakeSender{}
	b.cfg.Sender = send
	b.chain.unclaimed = []devshardtypes.EpochPerformanceSummary{{EpochId: 1, Rewarded: 5}}
	d, err := Open(t.Context(), b.cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, d.Close(context.Background())) }()
	require.Eventually(t, func() bool { return len(send.claims()) > 0 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, uint64(1), send.claims()[0])
	require.NotContains(t, b.logs.String(), "rewards are not claimed automatically")
}
