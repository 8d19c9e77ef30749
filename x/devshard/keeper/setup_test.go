package keeper_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"
	storetypes "cosmossdk.io/store/types"

	"github.com/cosmos/cosmos-sdk/codec"
	addresscodec "github.com/cosmos/cosmos-sdk/codec/address"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	"github.com/cosmos/cosmos-sdk/runtime"
	"github.com/cosmos/cosmos-sdk/testutil"
	sdk "github.com/cosmos/cosmos-sdk/types"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	"github.com/cosmos/cosmos-sdk/x/authz"

	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/x/devshard/keeper"
	"github.com/devshard/devshard/x/devshard/types"
	schedulerkeeper "github.com/devshard/devshard/x/scheduler/keeper"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

const (
	authority = "gov-authority"
	denom     = "ushard"
)

// bundle is one test's chain: the devshard keeper wired to a real scheduler
// over a fresh store, a bank and authz that live in memory, and a hook that
// logs every epoch transition in the order it ran.
type bundle struct {
	ctx   sdk.Context
	k     keeper.Keeper
	sched schedulerkeeper.Keeper
	bank  *bank
	authz grants
	hooks *hookLog
	// upgrades is x/upgrade's record of applied upgrades; a test applies one
	// with upgrade.
	upgrades *fakeUpgradeKeeper
}

// testParams: 4-block epochs that settle for one epoch, are accounted for
// one and claimable for one.
// Escrows: groups of 3 slots, amounts from 1,000, creation fee 100 and 2
// per nonce; group members may settle from the next epoch, escrows expire
// two epochs after the one they were created in; a root that is not
// finalized is paid 3 blocks after it is settled.
func testParams() types.Params {
	p := types.DefaultParams()
	p.EpochLength = 4
	p.SettlingEpochs = 1
	p.AccountingEpochs = 1
	p.ClaimableEpochs = 1
	p.MinCollateral = sdk.NewInt64Coin(denom, 100)
	p.MaxConsecutiveInvalid = 3
	p.GroupSize = 3
	p.MinEscrowAmount = 1_000
	p.MaxEscrowAmount = 1_000_000_000
	p.CreationFee = 100
	p.FeePerNonce = 2
	p.TokenPrice = 1
	p.SettlementWindowEpochs = 1
	p.ExpiryEpochs = 2
	p.ExpiryBatch = 2
	p.SettlementChallengeBlocks = 3
	return p
}

func setup(t testing.TB, params types.Params) *bundle {
	t.Helper()
	b := newBundle(t)
	gs := types.DefaultGenesis()
	gs.Params = params
	require.NoError(t, b.k.InitGenesis(b.ctx, *gs))
	return b
}

// newBundle wires the keepers over an empty store, before any genesis of the
// devshard module.
func newBundle(t testing.TB) *bundle {
	t.Helper()
	keys := storetypes.NewKVStoreKeys(types.StoreKey, schedulertypes.StoreKey)
	ctx := testutil.DefaultContextWithKeys(keys, nil, nil)
	cdc := codec.NewProtoCodec(codectypes.NewInterfaceRegistry())

	b := &bundle{bank: newBank(), authz: grants{}, hooks: &hookLog{}, upgrades: &fakeUpgradeKeeper{}}
	b.sched = schedulerkeeper.NewKeeper(cdc, runtime.NewKVStoreService(keys[schedulertypes.StoreKey]), authority)
	b.k = keeper.NewKeeper(cdc, runtime.NewKVStoreService(keys[types.StoreKey]), addresscodec.NewBech32Codec("cosmos"),
		authority, b.bank, b.authz, b.sched, b.bank, b.upgrades)
	b.k.SetHooks(b.hooks)
	require.NoError(t, b.sched.Register(b.k.TaskDefinitions()...))
	require.NoError(t, b.sched.Seal())

	// InitChain runs at height 0; epoch 1 begins at the end of block 1.
	b.ctx = ctx.WithBlockHeight(0).WithEventManager(sdk.NewEventManager()).WithChainID(sessiontest.ChainID)
	require.NoError(t, b.sched.InitGenesis(b.ctx, *schedulertypes.DefaultGenesis()))
	return b
}

// block starts block h: txs sent now run in it.
func (b *bundle) block(h int64) {
	b.ctx = b.ctx.WithBlockHeight(h).WithEventManager(sdk.NewEventManager())
}

// endBlock runs block's end in the app's order: the module's end blocker
// (upgrade record, escrow expiry), then the due scheduler tasks.
func (b *bundle) endBlock(t testing.TB) {
	t.Helper()
	require.NoError(t, b.k.RecordUpgrade(b.ctx))
	require.NoError(t, b.k.ExpireEscrows(b.ctx))
	require.NoError(t, b.sched.RunDue(b.ctx))
}

// advanceTo runs every block after the current one up to and including h.
func (b *bundle) advanceTo(t testing.TB, h int64) {
	t.Helper()
	for height := b.ctx.BlockHeight() + 1; height <= h; height++ {
		b.block(height)
		b.endBlock(t)
	}
}

func (b *bundle) epoch(t testing.TB, id uint64) types.Epoch {
	t.Helper()
	e, err := b.k.Epoch(b.ctx, id)
	require.NoError(t, err)
	return e
}

func (b *bundle) state(t testing.TB, id uint64) types.EpochState { return b.epoch(t, id).State }

func (b *bundle) participant(t testing.TB, addr sdk.AccAddress) types.Participant {
	t.Helper()
	p, err := b.k.Participants.Get(b.ctx, addr)
	require.NoError(t, err)
	return p
}

func (b *bundle) epochsIn(t testing.TB, s types.EpochState) []uint64 {
	t.Helper()
	res, err := keeper.NewQueryServer(b.k).EpochsByState(b.ctx, &types.QueryEpochsByStateRequest{State: s})
	require.NoError(t, err)
	ids := []uint64{}
	for _, e := range res.Epochs {
		ids = append(ids, e.Id)
	}
	return ids
}

// host returns a funded account.
func (b *bundle) host(n int, funds int64) sdk.AccAddress {
	addr := hostAddr(n)
	b.bank.balances[addr.String()] = sdk.NewCoins(sdk.NewInt64Coin(denom, funds))
	return addr
}

func (b *bundle) register(t testing.TB, addr sdk.AccAddress, collateral int64) uint64 {
	t.Helper()
	res, err := keeper.NewMsgServer(b.k).RegisterParticipant(b.ctx, &types.MsgRegisterParticipant{
		Participant: addr.String(), Url: "https://" + addr.String() + ".example", Collateral: sdk.NewInt64Coin(denom, collateral),
	})
	require.NoError(t, err)
	return res.UpcomingEpoch
}

// hostAddr is host n's 20-byte address.
func hostAddr(n int) sdk.AccAddress { return sdk.AccAddress(fmt.Appendf(nil, "host-%015d", n)) }

// bank keeps balances in memory, with module accounts under their addresses.
type bank struct{ balances map[string]sdk.Coins }

func newBank() *bank { return &bank{balances: map[string]sdk.Coins{}} }

func moduleAddr() sdk.AccAddress { return authtypes.NewModuleAddress(types.ModuleName) }

func (b *bank) move(from, to sdk.AccAddress, amt sdk.Coins) error {
	have := b.balances[from.String()]
	left, neg := have.SafeSub(amt...)
	if neg {
		return sdkerrors.ErrInsufficientFunds.Wrapf("spendable balance %s is smaller than %s", have, amt)
	}
	b.balances[from.String()] = left
	b.balances[to.String()] = b.balances[to.String()].Add(amt...)
	return nil
}

func (b *bank) SendCoinsFromAccountToModule(_ context.Context, from sdk.AccAddress, _ string, amt sdk.Coins) error {
	return b.move(from, moduleAddr(), amt)
}

func (b *bank) SendCoinsFromModuleToAccount(_ context.Context, _ string, to sdk.AccAddress, amt sdk.Coins) error {
	return b.move(moduleAddr(), to, amt)
}

// FundCommunityPool moves amt to the community pool's stand-in account.
func (b *bank) FundCommunityPool(_ context.Context, amt sdk.Coins, from sdk.AccAddress) error {
	return b.move(from, communityPool(), amt)
}

func communityPool() sdk.AccAddress { return authtypes.NewModuleAddress("distribution") }

func (b *bank) GetBalance(_ context.Context, addr sdk.AccAddress, d string) sdk.Coin {
	return sdk.NewCoin(d, b.balances[addr.String()].AmountOf(d))
}

func (b *bank) of(addr sdk.AccAddress) sdkmath.Int { return b.balances[addr.String()].AmountOf(denom) }

// grants are authz grants keyed by granter|grantee|type URL.
type grants map[string]authz.Authorization

func (g grants) GetAuthorization(_ context.Context, grantee, granter sdk.AccAddress, msgType string) (authz.Authorization, *time.Time) {
	return g[granter.String()+"|"+grantee.String()+"|"+msgType], nil
}

// hookLog records transitions and can be told to fail the move to one state.
type hookLog struct {
	seen   []string
	failTo types.EpochState
}

func (h *hookLog) OnEpochTransition(ctx context.Context, e types.Epoch, from, to types.EpochState) error {
	if to == h.failTo {
		return fmt.Errorf("accounting for epoch %d is not ready", e.Id)
	}
	h.seen = append(h.seen, fmt.Sprintf("%d:%s@%d", e.Id, to.Short(), sdk.UnwrapSDKContext(ctx).BlockHeight()))
	return nil
}

// fakeUpgradeKeeper stands in for x/upgrade: the upgrades applied so far, in
// order.
type fakeUpgradeKeeper struct {
	applied []appliedUpgrade
}

type appliedUpgrade struct {
	name   string
	height int64
}

func (f *fakeUpgradeKeeper) GetLastCompletedUpgrade(context.Context) (string, int64, error) {
	if len(f.applied) == 0 {
		return "", 0, nil
	}
	last := f.applied[len(f.applied)-1]
	return last.name, last.height, nil
}

// upgrade applies the software upgrade name in the current block, as
// x/upgrade's pre-blocker does at a plan's height.
func (b *bundle) upgrade(name string) {
	b.upgrades.applied = append(b.upgrades.applied, appliedUpgrade{name, b.ctx.BlockHeight()})
}
