package cmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"

	"github.com/cosmos/cosmos-sdk/codec"
	sdk "github.com/cosmos/cosmos-sdk/types"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"

	"github.com/devshard/devshard/chain"
	chaincmd "github.com/devshard/devshard/chain/cmd"
	"github.com/devshard/devshard/chain/node"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// run executes `chain args...` and returns its stdout.
func run(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	cmd := chaincmd.NewCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestCommandTreeHasTheUsualCommands(t *testing.T) {
	t.Parallel()
	root := chaincmd.NewCommand()
	for _, path := range [][]string{
		{"init"}, {"start"}, {"keys"}, {"tx"}, {"query"}, {"genesis"}, {"status"}, {"export"}, {"dev"},
		{"genesis", "gentx"}, {"genesis", "add-genesis-account"}, {"genesis", "collect-gentxs"},
		{"query", "devshard", "epochs-by-state"}, {"query", "devshard", "epoch-members"}, {"query", "devshard", "may-act-for"},
		{"query", "scheduler", "task-types"}, {"query", "scheduler", "failed-tasks"}, {"query", "scheduler", "tasks-by-due-height"},
		{"tx", "devshard", "register-participant"}, {"tx", "devshard", "unregister-participant"}, {"tx", "devshard", "cancel-epoch"},
		{"tx", "devshard", "create-escrow"}, {"tx", "devshard", "claim-rewards"},
		{"query", "devshard", "escrow"}, {"query", "devshard", "summary"}, {"query", "devshard", "conservation"},
		{"tx", "scheduler", "retry-failed-task"}, {"tx", "scheduler", "drop-failed-task"},
		{"tx", "bank", "send"}, {"tx", "authz", "grant"}, {"tx", "gov", "submit-proposal"}, {"query", "staking", "validators"},
	} {
		cmd, rest, err := root.Find(path)
		require.NoError(t, err, strings.Join(path, " "))
		require.Empty(t, rest, strings.Join(path, " "))
		require.Equal(t, path[len(path)-1], cmd.Name())
	}
}

// init writes a genesis with a real block gas limit.
func TestInitSetsTheBlockGasLimit(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := run(t, ctx, "init", "n0", "--chain-id", "devshard-test", "--home", home)
	require.NoError(t, err)
	raw, err := os.ReadFile(filepath.Join(home, "config", "genesis.json"))
	require.NoError(t, err)
	require.Contains(t, string(raw), fmt.Sprintf(`"max_gas": "%d"`, chain.BlockMaxGas))
}

// The generated CLI signs and sends a devshard tx and queries the result,
// against a running node.
func TestCLIRegistersAndQueries(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	params := devshardtypes.DefaultParams()
	params.EpochLength = 5
	n, err := node.Start(ctx, node.Config{
		BlockTime: 200 * time.Millisecond,
		Params:    &params,
		Accounts:  []node.Account{{Name: "alice", Coins: sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(10_000_000)))}},
	})
	require.NoError(t, err)
	defer n.Close()
	alice := n.Accounts[0]
	home := t.TempDir()
	common := []string{"--home", home, "--keyring-backend", "test"}

	_, err = run(t, ctx, append([]string{"keys", "add", "alice", "--recover", "--source", writeMnemonic(t, alice.Mnemonic)}, common...)...)
	require.NoError(t, err)
	out, err := run(t, ctx, append([]string{"keys", "show", "alice", "-a"}, common...)...)
	require.NoError(t, err)
	require.Equal(t, alice.Address.String(), strings.TrimSpace(out))
	require.True(t, strings.HasPrefix(alice.Address.String(), "devshard1"))

	out, err = run(t, ctx, append([]string{"tx", "devshard", "register-participant", "https://alice.example", "1000000ushard",
		"--from", "alice", "--chain-id", n.ChainID, "--node", n.RPCAddress, "--yes", "-o", "json"}, common...)...)
	require.NoError(t, err, out)
	var res struct {
		Code   uint32 `json:"code"`
		TxHash string `json:"txhash"`
		RawLog string `json:"raw_log"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastJSON(out)), &res), out)
	require.Zero(t, res.Code, res.RawLog)

	// Wait for the tx's block, then read the participant back.
	require.NoError(t, n.WaitForHeight(ctx, n.Height()+2))
	out, err = run(t, ctx, "query", "devshard", "participant", alice.Address.String(), "--node", n.RPCAddress, "-o", "json", "--home", home)
	require.NoError(t, err, out)
	require.Contains(t, out, `"url": "https://alice.example"`)

	out, err = run(t, ctx, "query", "devshard", "epochs-by-state", "cancelled", "--node", n.RPCAddress, "-o", "json", "--home", home)
	require.NoError(t, err, out)
	require.Contains(t, out, `"state": "EPOCH_STATE_CANCELLED"`)

	out, err = run(t, ctx, "query", "scheduler", "task-types", "--node", n.RPCAddress, "-o", "json", "--home", home)
	require.NoError(t, err, out)
	require.Contains(t, out, `"name": "devshard/epoch-settle"`)
}

func writeMnemonic(t *testing.T, mnemonic string) string {
	t.Helper()
	path := t.TempDir() + "/mnemonic"
	require.NoError(t, os.WriteFile(path, []byte(mnemonic), 0o600))
	return path
}

// lastJSON is the last line of out that looks like a JSON object (the CLI
// may print notes before it).
func lastJSON(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(strings.TrimSpace(lines[i]), "{") {
			return lines[i]
		}
	}
	return out
}

// A parameter change goes through governance, from the generated CLI: the
// proposal carries MsgUpdateParams signed by the gov module account.
func TestGovernanceUpdatesParamsThroughCLI(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	votingPeriod := 2 * time.Second
	n, err := node.Start(ctx, node.Config{
		BlockTime: 200 * time.Millisecond,
		Genesis: func(cdc codec.JSONCodec, state chain.GenesisState) error {
			var gov govv1.GenesisState
			cdc.MustUnmarshalJSON(state[govtypes.ModuleName], &gov)
			gov.Params.VotingPeriod = &votingPeriod
			state[govtypes.ModuleName] = cdc.MustMarshalJSON(&gov)
			return nil
		},
	})
	require.NoError(t, err)
	defer n.Close()
	home := t.TempDir()
	common := []string{"--home", home, "--keyring-backend", "test"}
	send := []string{"--chain-id", n.ChainID, "--node", n.RPCAddress, "--yes", "-o", "json"}
	_, err = run(t, ctx, append([]string{"keys", "add", "validator", "--recover", "--source", writeMnemonic(t, n.Validator.Mnemonic)}, common...)...)
	require.NoError(t, err)

	params := devshardtypes.DefaultParams()
	params.EpochLength = 7
	paramsJSON, err := n.Encoding.Codec.MarshalJSON(&params)
	require.NoError(t, err)
	out, err := run(t, ctx, append(append([]string{"tx", "devshard", "update-params", string(paramsJSON),
		"--title", "seven", "--summary", "seven-block epochs", "--deposit", "10000000ushard", "--from", "validator"}, send...), common...)...)
	require.NoError(t, err, out)
	require.NoError(t, n.WaitForHeight(ctx, n.Height()+2))
	out, err = run(t, ctx, append(append([]string{"tx", "gov", "vote", "1", "yes", "--from", "validator"}, send...), common...)...)
	require.NoError(t, err, out)

	q := devshardtypes.NewQueryClient(n.Conn())
	require.Eventually(t, func() bool {
		res, err := q.Params(ctx, &devshardtypes.QueryParamsRequest{})
		return err == nil && res.Params.EpochLength == 7
	}, 20*time.Second, 200*time.Millisecond, "the proposal passes and sets the params")
}

// A positional number that is not one is named in words, not as the hidden
// flag autocli binds it to ("--0").
func TestNumberArgumentsAreCheckedInWords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"q", "devshard", "escrow", "abc"}, `escrow id must be a whole number, 0 or more, got "abc"`},
		{[]string{"q", "devshard", "epoch", "1.5"}, `epoch id must be a whole number, 0 or more, got "1.5"`},
		{[]string{"q", "devshard", "epoch-members", "x1"}, `epoch id must be a whole number, 0 or more, got "x1"`},
		{[]string{"q", "devshard", "summary", "seven", "devshard1xyz"}, `epoch id must be a whole number, 0 or more, got "seven"`},
		{[]string{"q", "devshard", "escrow", "99999999999999999999"}, `escrow id is out of range`},
		{[]string{"tx", "devshard", "claim-rewards", "abc", "--from", "x"}, `epoch id must be a whole number, 0 or more, got "abc"`},
	} {
		_, err := run(t, ctx, append(c.args, "--home", t.TempDir())...)
		require.ErrorContains(t, err, c.says, c.args)
		require.NotContains(t, err.Error(), "--0", c.args)
	}
	// A well-formed number passes the check and fails later, at the node.
	_, err := run(t, ctx, "q", "devshard", "escrow", "7", "--node", "tcp://127.0.0.1:1", "--home", t.TempDir())
	require.Error(t, err)
	require.NotContains(t, err.Error(), "whole number")
}

// start on a home init never wrote says so, instead of asking for a
// minimum gas price.
func TestStartOnAnEmptyHomeSaysToInit(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "never-initialised")
	_, err := run(t, context.Background(), "start", "--home", home)
	require.ErrorContains(t, err, "no chain home at "+home)
	require.ErrorContains(t, err, "devshard chain init")
	require.NotContains(t, err.Error(), "gas price")
}
