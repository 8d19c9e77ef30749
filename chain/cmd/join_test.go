package cmd_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// networkGenesis writes a genesis with `init` and returns its path.
func networkGenesis(t *testing.T, ctx context.Context) string {
	t.Helper()
	home := t.TempDir()
	_, err := run(t, ctx, "init", "v0", "--chain-id", "devshard-join", "--home", home)
	require.NoError(t, err)
	return filepath.Join(home, "config", "genesis.json")
}

func TestJoinHelpExplainsEveryFlag(t *testing.T) {
	t.Parallel()
	out, err := run(t, context.Background(), "join", "--help")
	require.NoError(t, err)
	for _, flag := range []string{"--genesis", "--peers", "--state-sync-rpc", "--moniker", "--home", "devshard chain start --home"} {
		require.Contains(t, out, flag)
	}
}

// Without --state-sync-rpc, join writes a home that block-syncs from the
// network's genesis, with the peers it was given.
func TestJoinWritesAHomeThatBlockSyncs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	genesis := networkGenesis(t, ctx)
	home := filepath.Join(t.TempDir(), "joiner")
	peer := strings.Repeat("ab", 20) + "@127.0.0.1:26656"
	out, err := run(t, ctx, "join", "--genesis", genesis, "--peers", peer, "--moniker", "j0", "--home", home)
	require.NoError(t, err)
	require.Contains(t, out, "block sync")

	want, err := os.ReadFile(genesis)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(home, "config", "genesis.json"))
	require.NoError(t, err)
	require.Equal(t, want, got, "the network's genesis, byte for byte")
	config, err := os.ReadFile(filepath.Join(home, "config", "config.toml"))
	require.NoError(t, err)
	require.Contains(t, string(config), `persistent_peers = "`+peer+`"`)
	require.Contains(t, string(config), `moniker = "j0"`)
	require.Contains(t, tomlSection(string(config), "statesync"), "enable = false")
	for _, f := range []string{"config/app.toml", "config/node_key.json", "config/priv_validator_key.json"} {
		require.FileExists(t, filepath.Join(home, f))
	}

	_, err = run(t, ctx, "join", "--genesis", genesis, "--peers", peer, "--home", home)
	require.ErrorContains(t, err, "already holds a chain")
}

// State sync needs a trusted block from the network: an RPC address that
// does not answer is refused in words, and nothing is written.
func TestJoinSaysWhenTheStateSyncRPCIsUnreachable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	genesis := networkGenesis(t, ctx)
	home := filepath.Join(t.TempDir(), "joiner")
	_, err := run(t, ctx, "join", "--genesis", genesis, "--peers", strings.Repeat("ab", 20)+"@127.0.0.1:26656",
		"--state-sync-rpc", "http://127.0.0.1:1", "--home", home)
	require.ErrorContains(t, err, "no state-sync RPC server answered (http://127.0.0.1:1: ")
	require.NoFileExists(t, filepath.Join(home, "config", "genesis.json"))

	_, err = run(t, ctx, "join", "--genesis", genesis, "--peers", "not-a-peer", "--home", home)
	require.ErrorContains(t, err, `peer "not-a-peer" is not id@host:port`)
}

// tomlSection is the text of the [name] table of a TOML file.
func tomlSection(file, name string) string {
	_, rest, _ := strings.Cut(file, "\n["+name+"]\n")
	section, _, _ := strings.Cut(rest, "\n[")
	return section
}
