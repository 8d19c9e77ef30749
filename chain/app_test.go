package chain_test

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"time"

	abci "github.com/cometbft/cometbft/abci/types"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	cmttypes "github.com/cometbft/cometbft/types"
	dbm "github.com/cosmos/cosmos-db"
	"github.com/stretchr/testify/require"

	"cosmossdk.io/core/header"
	"cosmossdk.io/log"
	sdkmath "cosmossdk.io/math"

	"github.com/cosmos/cosmos-sdk/baseapp"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	"github.com/cosmos/cosmos-sdk/crypto/keys/ed25519"
	"github.com/cosmos/cosmos-sdk/server"
	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	stakingtypes "github.com/cosmos/cosmos-sdk/x/staking/types"

	"github.com/devshard/devshard/chain"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

type noOptions struct{}

func (noOptions) Get(string) any { return nil }

// appOptions are server options (flags) by name.
type appOptions map[string]any

func (o appOptions) Get(key string) any { return o[key] }

const testChainID = "devshard-test"

// testChain is an app driven as CometBFT drives it: InitChain with the
// default genesis and one bonded validator, then FinalizeBlock and Commit,
// one block at a time.
type testChain struct {
	app      *chain.App
	height   int64     // the last committed block
	time     time.Time // its time
	proposer []byte    // the validator's consensus address
}

// setupChain starts a chain over opts and commits its first block.
func setupChain(t *testing.T, opts appOptions) *testChain {
	t.Helper()
	return startChain(t, chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, true, opts, baseapp.SetChainID(testChainID)))
}

// startChain initializes app's chain and commits its first block.
func startChain(t testing.TB, app *chain.App) *testChain {
	t.Helper()
	genesis, proposer := genesisWithValidator(t, app)
	params := cmttypes.DefaultConsensusParams().ToProto()
	c := &testChain{app: app, time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), proposer: proposer}
	_, err := app.InitChain(&abci.RequestInitChain{
		ChainId: testChainID, Time: c.time, InitialHeight: 1, ConsensusParams: &params, AppStateBytes: genesis,
	})
	require.NoError(t, err)
	c.nextBlock(t, 0)
	return c
}

// genesisWithValidator is the app's default genesis with one validator,
// bonded in genesis (no gentx), and the validator's consensus address.
func genesisWithValidator(t testing.TB, app *chain.App) ([]byte, []byte) {
	t.Helper()
	cdc := app.AppCodec()
	state := app.DefaultGenesis()
	key := ed25519.GenPrivKeyFromSecret([]byte("validator"))
	pubKey, err := codectypes.NewAnyWithValue(key.PubKey())
	require.NoError(t, err)
	operator := sdk.ValAddress(key.PubKey().Address())
	bond := sdk.DefaultPowerReduction

	var staking stakingtypes.GenesisState
	cdc.MustUnmarshalJSON(state[stakingtypes.ModuleName], &staking)
	zero := sdkmath.LegacyZeroDec()
	staking.Validators = []stakingtypes.Validator{{
		OperatorAddress: operator.String(), ConsensusPubkey: pubKey, Status: stakingtypes.Bonded,
		Tokens: bond, DelegatorShares: sdkmath.LegacyNewDecFromInt(bond),
		Commission:        stakingtypes.NewCommission(zero, zero, zero),
		MinSelfDelegation: sdkmath.OneInt(), UnbondingTime: time.Unix(0, 0).UTC(),
	}}
	staking.Delegations = []stakingtypes.Delegation{stakingtypes.NewDelegation(
		sdk.AccAddress(operator).String(), operator.String(), sdkmath.LegacyNewDecFromInt(bond))}
	state[stakingtypes.ModuleName] = cdc.MustMarshalJSON(&staking)

	var bank banktypes.GenesisState
	cdc.MustUnmarshalJSON(state[banktypes.ModuleName], &bank)
	bank.Balances = append(bank.Balances, banktypes.Balance{
		Address: authtypes.NewModuleAddress(stakingtypes.BondedPoolName).String(),
		Coins:   sdk.NewCoins(sdk.NewCoin(staking.Params.BondDenom, bond)),
	})
	state[banktypes.ModuleName] = cdc.MustMarshalJSON(&bank)

	bz, err := json.Marshal(state)
	require.NoError(t, err)
	return bz, key.PubKey().Address()
}

// block finalizes and commits the next block, after (block time). If the
// app rejects the block, it returns the error and commits nothing, as a
// node that stops.
func (c *testChain) block(after time.Duration) (*abci.ResponseFinalizeBlock, error) {
	height, at := c.height+1, c.time.Add(after)
	res, err := c.app.FinalizeBlock(&abci.RequestFinalizeBlock{Height: height, Time: at, ProposerAddress: c.proposer})
	if err != nil {
		return nil, err
	}
	if _, err := c.app.Commit(); err != nil {
		return nil, err
	}
	c.height, c.time = height, at
	return res, nil
}

func (c *testChain) nextBlock(t testing.TB, after time.Duration) *abci.ResponseFinalizeBlock {
	t.Helper()
	res, err := c.block(after)
	require.NoError(t, err)
	return res
}

// committed is a context on the committed state at the last block's height
// and time, as a tx of that block saw it. What it writes is in the state the
// next block starts from.
func (c *testChain) committed() sdk.Context {
	return c.app.NewUncachedContext(false, cmtproto.Header{ChainID: testChainID, Height: c.height, Time: c.time}).
		WithHeaderInfo(header.Info{ChainID: testChainID, Height: c.height, Time: c.time})
}

func TestAppWiring(t *testing.T) {
	t.Parallel()
	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, false, noOptions{})

	// Clients encode with Basics(); it must know every module the app runs.
	require.Equal(t,
		slices.Sorted(maps.Keys(app.ModuleManager.Modules)),
		slices.Sorted(maps.Keys(chain.Basics())))

	// Every message of every module has a signer and a route.
	for _, url := range app.InterfaceRegistry().ListImplementations(sdk.MsgInterfaceProtoName) {
		require.NotNil(t, app.MsgServiceRouter().HandlerByTypeURL(url), url)
	}

	require.Equal(t, "devshard", sdk.GetConfig().GetBech32AccountAddrPrefix())
	genesis := app.DefaultGenesis()
	for _, module := range []string{"staking", "gov", "devshard"} {
		require.Contains(t, string(genesis[module]), `"ushard"`, module)
	}
	var names []string
	for _, tt := range app.SchedulerKeeper.TaskTypes() {
		names = append(names, tt.Name)
	}
	require.Equal(t, []string{
		"devshard/epoch-settle", "devshard/epoch-account", "devshard/epoch-begin",
		"devshard/epoch-claimable", "devshard/epoch-close", "devshard/settlement-window",
	}, names, "the order same-block epoch transitions (and settlement windows) run in")

	var routes []string
	for _, r := range app.Invariants() {
		routes = append(routes, r.FullRoute())
	}
	require.Equal(t, []string{"devshard/conservation"}, routes, "the invariants the app checks")
}

// breakConservation books 5ushard of collateral the module account never
// received.
func breakConservation(t *testing.T, c *testChain) {
	t.Helper()
	ghost := sdk.AccAddress("ghost-participant---")
	require.NoError(t, c.app.DevshardKeeper.Participants.Set(c.committed(), ghost, devshardtypes.Participant{
		Address: ghost.String(), Url: "https://ghost.example", Collateral: sdk.NewInt64Coin(chain.Denom, 5),
		Status: devshardtypes.ParticipantActive,
	}))
}

func TestBrokenConservationStopsACheckingNode(t *testing.T) {
	t.Parallel()
	c := setupChain(t, appOptions{server.FlagInvCheckPeriod: 2})
	c.nextBlock(t, time.Second) // 2: checked, the books balance
	require.NoError(t, c.app.AssertInvariants(c.committed()))

	breakConservation(t, c)
	err := c.app.AssertInvariants(c.committed())
	var broken *chain.BrokenInvariantError
	require.ErrorAs(t, err, &broken)
	require.Equal(t, "devshard/conservation", broken.Route)
	require.Contains(t, broken.Report, "owed 5ushard")

	c.nextBlock(t, time.Second) // 3: not a checked height
	_, err = c.block(time.Second)
	require.ErrorAs(t, err, &broken, "block 4 is checked: the node stops")
	require.Equal(t, int64(4), broken.Height)
	require.Contains(t, err.Error(), "invariant devshard/conservation broken at height 4")
	require.Contains(t, err.Error(), "--inv-check-period 2")
	require.Equal(t, int64(3), c.app.LastBlockHeight(), "block 4 is not committed")
}

func TestInvariantsAreNotCheckedByDefault(t *testing.T) {
	t.Parallel()
	c := setupChain(t, appOptions{})
	breakConservation(t, c)
	for range 3 {
		c.nextBlock(t, time.Second)
	}
	require.Error(t, c.app.AssertInvariants(c.committed()), "broken, but only a node with --inv-check-period looks")
}
