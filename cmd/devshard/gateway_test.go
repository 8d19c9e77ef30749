package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/internal/settings/settingstest"
)

func lookup(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

// loadGateway parses args as the gateway command's flags and loads its
// settings from the file at path (none when empty) and vars.
func loadGateway(t *testing.T, path string, vars map[string]string, args ...string) (*gatewayConfig, string, error) {
	t.Helper()
	c := &gatewayConfig{}
	s := gatewaySettings(c)
	fs := pflag.NewFlagSet("gateway", pflag.ContinueOnError)
	var notices bytes.Buffer
	fs.SetOutput(&notices)
	s.AddFlags(fs)
	require.NoError(t, fs.Parse(args))
	err := s.Load(path, lookup(vars), &notices)
	return c, notices.String(), err
}

// Every gateway setting reads DEVSHARD_GATEWAY_<KEY>; a flag on the command
// line wins, and a bad value is an error that names the variable.
func TestGatewayFlagsFromEnvironment(t *testing.T) {
	t.Parallel()
	c, _, err := loadGateway(t, "", map[string]string{
		"DEVSHARD_GATEWAY_LISTEN":        "127.0.0.1:9999",
		"DEVSHARD_GATEWAY_CHAIN_GRPC":    "10.0.0.1:9090",
		"DEVSHARD_GATEWAY_ESCROW_AMOUNT": "42",
		"DEVSHARD_GATEWAY_API_KEY":       "ci:sk-1,app:sk-2",
	}, "--escrow-amount", "7", "--chain-id", "devshard-test")
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9999", c.daemon.Listen)
	require.Equal(t, "10.0.0.1:9090", c.daemon.ChainGRPC)
	require.Equal(t, "devshard-test", c.daemon.ChainID)
	require.Equal(t, uint64(7), c.daemon.Gateway.EscrowAmount, "the command line wins over the environment")
	require.Equal(t, []string{"ci:sk-1", "app:sk-2"}, c.apiKeys)
	require.Equal(t, 50*time.Millisecond, c.daemon.Gateway.HoldFor, "defaults fill the rest")

	_, _, err = loadGateway(t, "", map[string]string{"DEVSHARD_GATEWAY_MAX_TOKENS": "lots"})
	require.ErrorContains(t, err, "max_tokens from DEVSHARD_GATEWAY_MAX_TOKENS: expected a whole number")
}

// The gateway reads <home>/gateway.toml; the environment and flags override it.
func TestGatewayConfigFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "gateway.toml")
	require.NoError(t, os.WriteFile(path, []byte(`
models = ["llama"]
hold_for = "10ms"
max_in_flight = 8
[chain]
grpc = "10.0.0.2:9090"
[storage]
synchronous = "NORMAL"
`), 0o600))
	c, _, err := loadGateway(t, path, map[string]string{"DEVSHARD_GATEWAY_MAX_IN_FLIGHT": "9"})
	require.NoError(t, err)
	require.Equal(t, []string{"llama"}, c.daemon.Gateway.Models)
	require.Equal(t, 10*time.Millisecond, c.daemon.Gateway.HoldFor)
	require.Equal(t, 9, c.daemon.MaxInFlight)
	require.Equal(t, "10.0.0.2:9090", c.daemon.ChainGRPC)
	require.Equal(t, "NORMAL", c.daemon.Synchronous)

	// The command finds the file in its home, and refuses what it does not know.
	home := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(home, "gateway.toml"), []byte("escrow_amout = 5\n"), 0o600))
	cmd := newGatewayCommand()
	cmd.SetArgs([]string{"--home", home})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	require.ErrorContains(t, cmd.Execute(), "config "+filepath.Join(home, "gateway.toml")+" has unknown settings: escrow_amout")
}

// Scripts written before issue 16 keep working, with a one-line notice.
func TestFormerGatewayNames(t *testing.T) {
	t.Parallel()
	c, notices, err := loadGateway(t, "", map[string]string{"DEVSHARD_GATEWAY_SYNCHRONOUS": "NORMAL"},
		"--chain.grpc", "10.0.0.3:9090", "--chain.rpc", "http://10.0.0.3:26657", "--chain.id", "old")
	require.NoError(t, err)
	require.Equal(t, "10.0.0.3:9090", c.daemon.ChainGRPC)
	require.Equal(t, "http://10.0.0.3:26657", c.daemon.ChainRPC)
	require.Equal(t, "old", c.daemon.ChainID)
	require.Equal(t, "NORMAL", c.daemon.Synchronous)
	require.Equal(t, `Flag --chain.grpc has been deprecated, use --chain-grpc
Flag --chain.rpc has been deprecated, use --chain-rpc
Flag --chain.id has been deprecated, use --chain-id
Environment variable DEVSHARD_GATEWAY_SYNCHRONOUS has been deprecated, use DEVSHARD_GATEWAY_STORAGE_SYNCHRONOUS
`, notices)

	c, _, err = loadGateway(t, "", nil, "--synchronous", "NORMAL")
	require.NoError(t, err)
	require.Equal(t, "NORMAL", c.daemon.Synchronous)
}

// docs/gateway.md shows the settings table the declarations render.
func TestGatewayDocsShowTheSettingsTable(t *testing.T) {
	t.Parallel()
	settingstest.RequireDocTable(t, "../../docs/gateway.md", gatewaySettings(&gatewayConfig{}))
}

// An API key on the command line is refused before anything starts: every
// user of the machine sees a process's arguments. The environment and the
// keys file (hashes only) are the ways in.
//
// Checked against the old flags: --api-key was taken, and the command
// went on to fail on the missing gateway key file instead.
func TestAttackAPIKeyOnTheCommandLineIsRefused(t *testing.T) {
	t.Parallel()
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
	c, _, err := loadGateway(t, "", map[string]string{"DEVSHARD_GATEWAY_API_KEY": "ci:sk-devshard-from-the-env-01"}, "--home", home)
	require.NoError(t, err)
	keys, err := loadAPIKeys(c.daemon.Home, c, nil)
	require.NoError(t, err)
	ci, err := gateway.HashAPIKey("ci", "sk-devshard-from-the-env-01")
	require.NoError(t, err)
	require.Equal(t, []gateway.APIKey{ci, app}, keys.Keys())

	// The keys file holds hashes: a plain key there is refused.
	require.NoError(t, os.WriteFile(filepath.Join(home, "api_keys"), []byte("app:sk-devshard-from-the-file-0\n"), 0o600))
	_, err = loadAPIKeys(home, &gatewayConfig{apiKeysFile: "api_keys"}, nil)
	require.ErrorContains(t, err, "keys are kept hashed")

	// Nor may the file carry a key.
	path := filepath.Join(home, "gateway.toml")
	require.NoError(t, os.WriteFile(path, []byte("api_key = [\"app:sk-devshard-from-the-file-0\"]\n"), 0o600))
	_, _, err = loadGateway(t, path, nil)
	require.ErrorContains(t, err, "api_key is taken from the environment only (DEVSHARD_GATEWAY_API_KEY)")
}

// Every operator-relevant field of gateway.Config has a setting, and the
// value given reaches the Config the gateway is built from. The docs once
// cited --lanes and --host-timeout, which did not exist: a production
// gateway was held to one escrow lane.
func TestGatewayTuningReachesTheConfig(t *testing.T) {
	t.Parallel()
	c, _, err := loadGateway(t, "", map[string]string{"DEVSHARD_GATEWAY_EPOCH_POLL": "7s"},
		"--chain-grpc", "10.0.0.1:9090,10.0.0.2:9090", "--chain-stall-after", "45s", "--lanes", "4", "--host-timeout", "2s", "--attempts", "5", "--flush-every", "250ms", "--default-max-tokens", "64")
	require.NoError(t, err)
	require.NoError(t, c.check())
	g := c.daemon.Gateway
	require.Equal(t, 4, g.Lanes)
	require.Equal(t, 2*time.Second, g.HostTimeout)
	require.Equal(t, 5, g.Attempts)
	require.Equal(t, 250*time.Millisecond, g.FlushEvery)
	require.Equal(t, 7*time.Second, g.EpochPoll)
	require.Equal(t, 64, g.DefaultMaxTokens)
	require.Equal(t, 45*time.Second, g.ChainStallAfter)
	require.Equal(t, "10.0.0.1:9090,10.0.0.2:9090", c.daemon.ChainGRPC, "a list of nodes")

	c, _, err = loadGateway(t, "", nil)
	require.NoError(t, err)
	require.Equal(t, 1, c.daemon.Gateway.Lanes, "one lane by default")

	for _, bad := range []struct {
		args []string
		says string
	}{
		{[]string{"--lanes", "0"}, "lanes must be 1 or more, got 0"},
		{[]string{"--attempts", "-1"}, "attempts must be 1 or more, got -1"},
		{[]string{"--host-timeout", "0s"}, "host_timeout must be a positive duration such as 5s, got 0s"},
		{[]string{"--epoch-poll", "-1s"}, "epoch_poll must be a positive duration"},
		{[]string{"--max-tokens", "100", "--default-max-tokens", "200"}, "default_max_tokens (200) must not exceed max_tokens (100)"},
		{[]string{"--escrow-amount", "0"}, "escrow_amount must be more than 0"},
		{[]string{"--listen", "8080"}, `cannot listen on "8080"`},
		{[]string{"--storage-synchronous", "sometimes"}, `storage.synchronous is "sometimes": set --storage-synchronous`},
		{[]string{"--chain-grpc", "a:9090, b:90900"}, `chain.grpc: gRPC endpoint 2 of 2, "b:90900", is malformed: its port "90900" is not a number from 1 to 65535; set --chain-grpc`},
		{[]string{"--chain-rpc", "http://a:26657,,http://b:26657"}, `chain.rpc: CometBFT RPC endpoint 2 of 3 in "http://a:26657,,http://b:26657" is empty; set --chain-rpc`},
		{[]string{"--chain-stall-after", "0s"}, "chain.stall_after must be a positive duration"},
	} {
		c, _, err := loadGateway(t, "", nil, bad.args...)
		require.NoError(t, err)
		require.ErrorContains(t, c.check(), bad.says, bad.args)
	}

	// The command checks before it opens anything.
	cmd := newGatewayCommand()
	cmd.SetArgs([]string{"--home", t.TempDir(), "--lanes", "0"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	require.ErrorContains(t, cmd.Execute(), "lanes must be 1 or more")
}
