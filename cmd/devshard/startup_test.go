package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store/boot"
	"github.com/devshard/devshard/store/legacy/legacytest"
	"github.com/devshard/devshard/store/storetest"
)

// Every daemon that cannot start exits 1 with one line that names the
// cause and the setting that fixes it, and no stack trace. Before issue
// 17 every gateway case panicked in Open's cleanup, and the cause was lost.
func TestDaemonsThatCannotStartSayWhyInOneLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "devshard")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	gwHome, hostHome := filepath.Join(dir, "gateway"), filepath.Join(dir, "host")
	for _, args := range [][]string{{"gateway", "init", "--home", gwHome}, {"host", "init", "--home", hostHome}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		require.NoError(t, err, string(out))
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { busy.Close() }) // the subtests run after this function returns
	refused := unusedAddr(t)

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"gateway listen", []string{"gateway", "--home", gwHome, "--listen", "nonsense"},
			[]string{`cannot listen on "nonsense"`, "missing port in address", "set --listen (DEVSHARD_GATEWAY_LISTEN) to a free host:port"}},
		{"gateway synchronous", []string{"gateway", "--home", gwHome, "--storage-synchronous", "SOMETIMES"},
			[]string{`storage.synchronous is "SOMETIMES": set --storage-synchronous (DEVSHARD_GATEWAY_STORAGE_SYNCHRONOUS) to FULL or NORMAL`}},
		{"gateway without chain rpc", []string{"gateway", "--home", gwHome, "--listen", "127.0.0.1:0", "--chain-rpc", "http://" + refused},
			[]string{"the chain is unreachable at http://" + refused, "connection refused", "set --chain-rpc (DEVSHARD_GATEWAY_CHAIN_RPC)"}},
		{"gateway without chain grpc", []string{"gateway", "--home", gwHome, "--listen", "127.0.0.1:0", "--chain-id", "devshard-local", "--chain-grpc", refused},
			[]string{"the chain is unreachable at " + refused, "connection refused", "set --chain-grpc (DEVSHARD_GATEWAY_CHAIN_GRPC)"}},
		{"host listen", []string{"host", "--home", hostHome, "--listen", busy.Addr().String()},
			[]string{`cannot listen on "` + busy.Addr().String() + `"`, "address already in use", "set listen (--listen, DEVSHARD_HOST_LISTEN) to a free host:port"}},
		{"host synchronous", []string{"host", "--home", hostHome, "--storage-synchronous", "SOMETIMES"},
			[]string{`storage.synchronous must be FULL or NORMAL, got "SOMETIMES"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tc.args...)
			cmd.Env = []string{"HOME=" + dir, "PATH=/usr/bin:/bin"}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit, "the daemon must exit on its own, not run: %s", stderr.String())
			require.Equal(t, 1, exit.ExitCode(), stderr.String())
			got := stderr.String()
			require.NotContains(t, got, "panic")
			require.NotContains(t, got, "goroutine")
			lines := strings.Split(strings.TrimSpace(got), "\n")
			last := lines[len(lines)-1]
			require.True(t, strings.HasPrefix(last, "error: "), got)
			for _, w := range tc.want {
				require.Contains(t, last, w)
			}
		})
	}
}

// forward relays every connection made to from on to to, from now on.
func forward(t *testing.T, from, to string) {
	t.Helper()
	l, err := net.Listen("tcp", from)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.Close() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
}

// A host started before its chain node keeps its API up, answers /readyz
// with 503 and why (the address it tried, the setting that names it),
// retries with backoff, and becomes ready once a real node answers there.
func TestHostWaitsForAChainStartedLate(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	home := t.TempDir()
	root := newRootCommand()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"host", "init", "--home", home})
	require.NoError(t, root.Execute())

	listen, grpcAddr, rpcAddr := unusedAddr(t), unusedAddr(t), unusedAddr(t)
	cfg, err := host.LoadConfig(home+"/host.toml", func(string) (string, bool) { return "", false }, map[string]string{
		"listen": listen, "chain.grpc": grpcAddr, "chain.rpc": "http://" + rpcAddr,
	})
	require.NoError(t, err)
	var logs syncBuffer
	hostCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runHost(hostCtx, cfg, slog.New(slog.NewTextHandler(&logs, nil))) }()

	readyz := func() (int, string) {
		resp, err := http.Get("http://" + listen + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	require.Eventually(t, func() bool { _, b := readyz(); return strings.Contains(b, "chain unreachable") }, 20*time.Second, 50*time.Millisecond)
	status, body := readyz()
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Contains(t, body, "chain unreachable at http://"+rpcAddr)
	require.Contains(t, body, "connection refused")
	require.Contains(t, body, "set chain.rpc (--chain-rpc, DEVSHARD_HOST_CHAIN_RPC)")
	require.NotContains(t, logs.String(), "learn the current epoch")
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "retry_in=2s") }, 10*time.Second, 50*time.Millisecond, "the wait doubles")
	require.Contains(t, logs.String(), "retry_in=1s")

	n, err := node.Start(ctx, node.Config{BlockTime: 200 * time.Millisecond})
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()
	forward(t, grpcAddr, n.GRPCAddress)
	forward(t, rpcAddr, strings.TrimPrefix(n.RPCAddress, "tcp://"))

	require.Eventually(t, func() bool { s, _ := readyz(); return s == http.StatusOK }, 60*time.Second, 100*time.Millisecond, "ready once the chain answers")
	stop()
	require.NoError(t, <-done)
}

// A signal while the host waits for its chain is a clean shutdown.
func TestHostStoppedWhileWaitingForItsChain(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	root := newRootCommand()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"host", "init", "--home", home})
	require.NoError(t, root.Execute())
	cfg, err := host.LoadConfig(home+"/host.toml", func(string) (string, bool) { return "", false }, map[string]string{
		"listen": unusedAddr(t), "chain.grpc": unusedAddr(t), "chain.rpc": "http://" + unusedAddr(t),
	})
	require.NoError(t, err)
	var logs syncBuffer
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- runHost(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil))) }()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "chain unreachable") }, 10*time.Second, 10*time.Millisecond)
	stop()
	require.NoError(t, <-done)
	require.Contains(t, logs.String(), "shutting down before the host was ready")
}

// The host's storage is the one its configuration names: the durability
// reaches the SQLite connections (FULL unless NORMAL is set), and a legacy
// database at <home>/host.db is migrated on the first boot only.
func TestHostStorageFromConfig(t *testing.T) {
	t.Parallel()
	none := func(string) (string, bool) { return "", false }
	epochOf := func(context.Context, uint64, *sessionpb.EscrowSnapshot) (uint64, error) { return 1, nil }
	home := t.TempDir()
	cfg, err := host.LoadConfig("", none, map[string]string{"home": home})
	require.NoError(t, err)
	st := hostStorage(cfg)
	st.Getenv, st.EpochOf = func(string) string { return "" }, epochOf
	o, err := boot.Open(t.Context(), st)
	require.NoError(t, err)
	require.Equal(t, "FULL", o.Synchronous)
	require.NoError(t, o.Close())

	cfg, err = host.LoadConfig("", none, map[string]string{"home": home, "storage.synchronous": "NORMAL"})
	require.NoError(t, err)
	st = hostStorage(cfg)
	st.Getenv, st.EpochOf = func(string) string { return "" }, epochOf
	o, err = boot.Open(t.Context(), st)
	require.NoError(t, err)
	require.Equal(t, "NORMAL", o.Synchronous, "read back from the store's connections")
	require.NoError(t, o.Close())

	legacyHome := t.TempDir()
	legacytest.Write(t, filepath.Join(legacyHome, "host.db"), []*storetest.Chain{storetest.NewChain(77, 1, 3)}, []int{3})
	cfg, err = host.LoadConfig("", none, map[string]string{"home": legacyHome})
	require.NoError(t, err)
	st = hostStorage(cfg)
	st.Getenv, st.EpochOf = func(string) string { return "" }, epochOf
	o, err = boot.Open(t.Context(), st)
	require.NoError(t, err)
	require.Equal(t, 1, o.Legacy.Sessions, "the legacy file in the host's home is found")
	require.Equal(t, 3, o.Legacy.Diffs)
	require.NoError(t, o.Close())
	o, err = boot.Open(t.Context(), st)
	require.NoError(t, err)
	defer o.Close()
	require.Zero(t, o.Legacy.Sessions, "the second boot migrates nothing")
	last, err := o.LastNonce(t.Context(), 77)
	require.NoError(t, err)
	require.Equal(t, uint64(3), last)
}

func unusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}
