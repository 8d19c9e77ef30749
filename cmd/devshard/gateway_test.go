package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/gateway"
)

// Every gateway flag reads DEVSHARD_GATEWAY_<FLAG>; a flag on the command
// line wins, and a bad value is an error that names the variable.
func TestGatewayFlagsFromEnvironment(t *testing.T) {
	t.Setenv("DEVSHARD_GATEWAY_LISTEN", "127.0.0.1:9999")
	t.Setenv("DEVSHARD_GATEWAY_CHAIN_GRPC", "10.0.0.1:9090")
	t.Setenv("DEVSHARD_GATEWAY_ESCROW_AMOUNT", "42")
	cmd := newGatewayCommand()
	require.NoError(t, cmd.Flags().Parse([]string{"--escrow-amount", "7"}))
	require.NoError(t, applyEnv(cmd, "DEVSHARD_GATEWAY_"))
	listen, _ := cmd.Flags().GetString("listen")
	grpc, _ := cmd.Flags().GetString("chain.grpc")
	amount, _ := cmd.Flags().GetUint64("escrow-amount")
	require.Equal(t, "127.0.0.1:9999", listen)
	require.Equal(t, "10.0.0.1:9090", grpc)
	require.Equal(t, uint64(7), amount, "the command line wins over the environment")

	t.Setenv("DEVSHARD_GATEWAY_MAX_TOKENS", "lots")
	err := applyEnv(newGatewayCommand(), "DEVSHARD_GATEWAY_")
	require.ErrorContains(t, err, "DEVSHARD_GATEWAY_MAX_TOKENS")
}

// An API key on the command line is refused before anything starts: every
// user of the machine sees a process's arguments. The environment and the
// keys file (hashes only) are the ways in.
//
// Checked against the old flags: --api-key was taken, and the command
// went on to fail on the missing gateway key file instead.
func TestAttackAPIKeyOnTheCommandLineIsRefused(t *testing.T) {
	cmd := newGatewayCommand()
	cmd.SetArgs([]string{"--home", t.TempDir(), "--api-key", "app:sk-devshard-0123456789abcdef"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	require.ErrorContains(t, err, "--api-key is refused: a key on the command line is visible to every user of the machine")

	home := t.TempDir()
	app, err := gateway.HashAPIKey("app", "sk-devshard-from-the-file-0")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(home, "api_keys"), []byte(apiKeysHeader+app.Line()+"\n"), 0o600))
	t.Setenv("DEVSHARD_GATEWAY_API_KEY", "ci:sk-devshard-from-the-env-01")
	cmd = newGatewayCommand()
	require.NoError(t, cmd.Flags().Parse([]string{"--home", home}))
	require.NoError(t, refuseKeyOnCommandLine(cmd))
	require.NoError(t, applyEnv(cmd, "DEVSHARD_GATEWAY_"))
	home2, _ := cmd.Flags().GetString("home")
	envKeys, _ := cmd.Flags().GetStringSlice("api-key")
	keys, err := loadAPIKeys(gatewayFlags{home: home2, apiKeysFile: "api_keys", apiKeys: envKeys})
	require.NoError(t, err)
	ci, err := gateway.HashAPIKey("ci", "sk-devshard-from-the-env-01")
	require.NoError(t, err)
	require.Equal(t, []gateway.APIKey{ci, app}, keys)

	// The keys file holds hashes: a plain key there is refused.
	require.NoError(t, os.WriteFile(filepath.Join(home, "api_keys"), []byte("app:sk-devshard-from-the-file-0\n"), 0o600))
	_, err = loadAPIKeys(gatewayFlags{home: home, apiKeysFile: "api_keys"})
	require.ErrorContains(t, err, "keys are kept hashed")
}
