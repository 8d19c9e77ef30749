package chain_test

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	dbm "github.com/cosmos/cosmos-db"
	"github.com/stretchr/testify/require"

	"cosmossdk.io/log"
	"cosmossdk.io/store/rootmulti"
	storetypes "cosmossdk.io/store/types"
	upgradetypes "cosmossdk.io/x/upgrade/types"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/session"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

var (
	signURL  = sdk.MsgTypeURL(&devshardtypes.MsgSignSession{})
	claimURL = sdk.MsgTypeURL(&devshardtypes.MsgClaimRewards{})
)

// addr is a test account named s.
func addr(s string) sdk.AccAddress { return sdk.AccAddress(fmt.Appendf(nil, "%-20s", s)) }

// grantKey names a grant as grantsOf lists it.
func grantKey(granter, grantee, url string) string {
	return fmt.Sprintf("%s>%s %s", addr(granter), addr(grantee), url)
}

// grantsOf is every grant in ctx's state, "granter>grantee msg-type" to
// its expiration (RFC 3339, or "never").
func grantsOf(t *testing.T, app *chain.App, ctx sdk.Context) map[string]string {
	t.Helper()
	out := map[string]string{}
	app.AuthzKeeper.IterateGrants(ctx, func(granter, grantee sdk.AccAddress, g authz.Grant) bool {
		a, err := g.GetAuthorization()
		require.NoError(t, err)
		exp := "never"
		if g.Expiration != nil {
			exp = g.Expiration.Format(time.RFC3339)
		}
		out[fmt.Sprintf("%s>%s %s", granter, grantee, a.MsgTypeURL())] = exp
		return false
	})
	return out
}

// added is what after has and before has not.
func added(before, after map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			out[k] = v
		}
	}
	return out
}

// previousParams are params as the previous version stored them: no escrow
// field.
func previousParams() devshardtypes.Params {
	d := devshardtypes.DefaultParams()
	return devshardtypes.Params{EpochLength: d.EpochLength, SettlingEpochs: 1, AccountingEpochs: 1, ClaimableEpochs: 2,
		MinCollateral: sdk.NewInt64Coin(chain.Denom, 1_000_000), MaxConsecutiveInvalid: 10}
}

// seedWarmKeys writes, at ctx's time, the cold -> warm pairs the upgrade
// meets at upgradeAt, and returns the claim grants it must add (key to
// expiration):
//
//	cold1 -> warm1   sign, never expires              -> claim, never
//	cold2 -> warm2   sign, expires after the upgrade  -> claim, same expiration
//	cold2 -> warm2b  sign, never expires (second key) -> claim, never
//	cold3 -> warm3   sign, expired at the upgrade     -> nothing
//	cold4 -> warm4   a send authorization, no sign    -> nothing
//	cold5 -> warm5   sign, and claim already granted  -> nothing (claim kept)
func seedWarmKeys(t *testing.T, app *chain.App, ctx sdk.Context, upgradeAt time.Time) map[string]string {
	t.Helper()
	later, otherExp := upgradeAt.Add(time.Hour), upgradeAt.Add(2*time.Hour)
	expired := upgradeAt.Add(-time.Hour)
	save := func(ctx sdk.Context, granter, grantee string, a authz.Authorization, exp *time.Time) {
		require.NoError(t, app.AuthzKeeper.SaveGrant(ctx, addr(grantee), addr(granter), a, exp))
	}
	save(ctx, "cold1", "warm1", authz.NewGenericAuthorization(signURL), nil)
	save(ctx, "cold2", "warm2", authz.NewGenericAuthorization(signURL), &later)
	save(ctx, "cold2", "warm2b", authz.NewGenericAuthorization(signURL), nil)
	save(ctx.WithBlockTime(expired.Add(-time.Hour)), "cold3", "warm3", authz.NewGenericAuthorization(signURL), &expired)
	save(ctx, "cold4", "warm4", banktypes.NewSendAuthorization(sdk.NewCoins(sdk.NewInt64Coin(chain.Denom, 5)), nil), nil)
	save(ctx, "cold5", "warm5", authz.NewGenericAuthorization(signURL), &later)
	save(ctx, "cold5", "warm5", authz.NewGenericAuthorization(claimURL), &otherExp)
	return map[string]string{
		grantKey("cold1", "warm1", claimURL):  "never",
		grantKey("cold2", "warm2", claimURL):  later.Format(time.RFC3339),
		grantKey("cold2", "warm2b", claimURL): "never",
	}
}

// requireMigratedParams checks what the upgrade makes of previousParams.
func requireMigratedParams(t *testing.T, p devshardtypes.Params) {
	t.Helper()
	require.NoError(t, p.Validate())
	require.Equal(t, uint64(chain.UpgradeMaxEscrowsPerEpoch), p.MaxEscrowsPerEpoch)
	require.Equal(t, uint64(chain.UpgradeMaxNonce), p.MaxNonce)
	require.Equal(t, devshardtypes.DefaultParams().GroupSize, p.GroupSize, "a missing escrow param takes its default")
	require.Equal(t, previousParams().EpochLength, p.EpochLength, "a param the previous version had is kept")
}

func TestUpgradeEscrowsIsIdempotent(t *testing.T) {
	t.Parallel()
	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, true, noOptions{})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ctx := app.NewUncachedContext(false, cmtproto.Header{Time: now, Height: 10})
	require.NoError(t, app.DevshardKeeper.Params.Set(ctx, previousParams()))
	want := seedWarmKeys(t, app, ctx, now)
	before := grantsOf(t, app, ctx)

	require.NoError(t, chain.MigrateEscrows(ctx, app.DevshardKeeper, app.AuthzKeeper))
	first := grantsOf(t, app, ctx)
	p1, err := app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	requireMigratedParams(t, p1)
	require.Equal(t, want, added(before, first),
		"a claim grant per live source grant, with its expiration; none for the expired, the non-source and the already granted pair")
	require.Equal(t, before[grantKey("cold5", "warm5", claimURL)], first[grantKey("cold5", "warm5", claimURL)],
		"an existing grant is left alone")

	require.NoError(t, chain.MigrateEscrows(ctx, app.DevshardKeeper, app.AuthzKeeper))
	p2, err := app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, p1, p2, "the second run changes no param")
	require.Equal(t, first, grantsOf(t, app, ctx), "the second run adds no grant")
}

// A chain at session protocol 1 without a challenge window moves to this
// build's protocol and the default window; a second run changes nothing,
// and params the chain set are kept.
func TestUpgradeSessionV2(t *testing.T) {
	t.Parallel()
	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, true, noOptions{})
	ctx := app.NewUncachedContext(false, cmtproto.Header{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Height: 10})
	old := devshardtypes.DefaultParams()
	old.ProtocolVersion = 1
	old.SettlementChallengeBlocks = 0
	old.GroupSize = 7
	require.Error(t, old.Validate(), "this build does not run version 1")
	require.NoError(t, app.DevshardKeeper.Params.Set(ctx, old))

	require.NoError(t, chain.MigrateSessionV2(ctx, app.DevshardKeeper))
	p1, err := app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.NoError(t, p1.Validate())
	require.Equal(t, uint32(session.ProtocolVersion), p1.ProtocolVersion)
	require.Equal(t, devshardtypes.DefaultParams().SettlementChallengeBlocks, p1.SettlementChallengeBlocks)
	require.Equal(t, uint32(7), p1.GroupSize, "a param the chain set is kept")

	require.NoError(t, chain.MigrateSessionV2(ctx, app.DevshardKeeper))
	p2, err := app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, p1, p2, "the second run changes nothing")
}

// A chain of the previous version (no upgrade_protection_window: 0) gets
// the default window, so the upgrade that brings it is itself protected;
// the approved list and the params the chain set are kept.
func TestUpgradeRuntimeVersions(t *testing.T) {
	t.Parallel()
	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, true, noOptions{})
	ctx := app.NewUncachedContext(false, cmtproto.Header{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Height: 10})
	old := devshardtypes.DefaultParams()
	old.UpgradeProtectionWindow = 0
	old.GroupSize = 7
	old.ApprovedVersions = []devshardtypes.ApprovedVersion{{Name: "v1", Url: "https://dl.example/v1", Sha256: strings.Repeat("ab", 32)}}
	require.NoError(t, app.DevshardKeeper.Params.Set(ctx, old))

	require.NoError(t, chain.MigrateRuntimeVersions(ctx, app.DevshardKeeper))
	p, err := app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Validate())
	require.Equal(t, devshardtypes.DefaultParams().UpgradeProtectionWindow, p.UpgradeProtectionWindow)
	require.Equal(t, uint32(7), p.GroupSize, "a param the chain set is kept")
	require.Equal(t, old.ApprovedVersions, p.ApprovedVersions, "the approved list is kept")

	set := devshardtypes.DefaultParams()
	set.UpgradeProtectionWindow = 500
	require.NoError(t, app.DevshardKeeper.Params.Set(ctx, set))
	require.NoError(t, chain.MigrateRuntimeVersions(ctx, app.DevshardKeeper))
	p, err = app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(500), p.UpgradeProtectionWindow, "a window the chain set is kept")
}

// TestUpgradeEscrowsThroughXUpgrade runs the upgrade as a chain does: the
// plan is scheduled (as a passed proposal would) in block H-1, and x/upgrade's
// pre-blocker applies it at the start of block H.
func TestUpgradeEscrowsThroughXUpgrade(t *testing.T) {
	t.Parallel()
	c := setupChain(t, appOptions{})
	c.nextBlock(t, time.Second)

	ctx := c.committed()
	upgradeAt := c.time.Add(3 * time.Hour)
	require.NoError(t, c.app.DevshardKeeper.Params.Set(ctx, previousParams()))
	want := seedWarmKeys(t, c.app, ctx, upgradeAt)
	before := grantsOf(t, c.app, ctx)
	plan := upgradetypes.Plan{Name: chain.UpgradeEscrows, Height: c.height + 1}
	require.NoError(t, c.app.UpgradeKeeper.ScheduleUpgrade(ctx, plan))

	c.nextBlock(t, upgradeAt.Sub(c.time))
	ctx = c.committed()
	name, height, err := c.app.UpgradeKeeper.GetLastCompletedUpgrade(ctx)
	require.NoError(t, err)
	require.Equal(t, chain.UpgradeEscrows, name)
	require.Equal(t, plan.Height, height)
	recorded, err := c.app.DevshardKeeper.UpgradeHeights.Has(ctx, plan.Height)
	require.NoError(t, err)
	require.True(t, recorded, "x/devshard's end blocker records the height for upgrade protection")
	_, err = c.app.UpgradeKeeper.GetUpgradePlan(ctx)
	require.ErrorIs(t, err, upgradetypes.ErrNoUpgradePlanFound, "the applied plan is cleared")
	vm, err := c.app.UpgradeKeeper.GetModuleVersionMap(ctx)
	require.NoError(t, err)
	require.Equal(t, c.app.ModuleManager.GetVersionMap(), vm)

	p, err := c.app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	requireMigratedParams(t, p)
	after := grantsOf(t, c.app, ctx)
	require.Equal(t, want, added(before, after))
	require.Equal(t, before[grantKey("cold5", "warm5", claimURL)], after[grantKey("cold5", "warm5", claimURL)],
		"an existing grant is left alone")
	var removed []string
	for k := range before {
		if _, ok := after[k]; !ok {
			removed = append(removed, k)
		}
	}
	require.Equal(t, []string{grantKey("cold3", "warm3", signURL)}, removed,
		"the expired grant: x/authz prunes it in the same block's begin blocker, after the upgrade skipped it")
	require.NoError(t, c.app.AssertInvariants(ctx))

	// The handler again, on the upgraded state: only x/upgrade's own
	// bookkeeping (protocol version, done height) may change.
	again, _ := ctx.CacheContext()
	stores := storeDump(t, c.app, again)
	require.NoError(t, c.app.UpgradeKeeper.ApplyUpgrade(again, plan))
	require.Equal(t, []string{upgradetypes.StoreKey}, changedStores(stores, storeDump(t, c.app, again)))
}

// changedStores names the stores whose contents differ, sorted.
func changedStores(before, after map[string][][2][]byte) []string {
	names := slices.Collect(maps.Keys(before))
	for name := range after {
		if _, ok := before[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var changed []string
	for _, name := range names {
		if !slices.EqualFunc(before[name], after[name], func(a, b [2][]byte) bool {
			return bytes.Equal(a[0], b[0]) && bytes.Equal(a[1], b[1])
		}) {
			changed = append(changed, name)
		}
	}
	return changed
}

// storeDump is every key and value of every module store in ctx's state, by
// store name.
func storeDump(t *testing.T, app *chain.App, ctx sdk.Context) map[string][][2][]byte {
	t.Helper()
	rs, ok := app.CommitMultiStore().(*rootmulti.Store)
	require.True(t, ok)
	out := map[string][][2][]byte{}
	for name, key := range rs.StoreKeysByName() {
		if _, ok := key.(*storetypes.KVStoreKey); !ok {
			continue
		}
		it := ctx.KVStore(key).Iterator(nil, nil)
		for ; it.Valid(); it.Next() {
			out[name] = append(out[name], [2][]byte{it.Key(), it.Value()})
		}
		require.NoError(t, it.Close())
	}
	return out
}

// TestUpgradeSettlementCostKeepsTheState applies v5-settlement-cost through
// x/upgrade's pre-blocker: the plan completes, and no module's state but
// x/upgrade's own bookkeeping changes.
func TestUpgradeSettlementCostKeepsTheState(t *testing.T) {
	t.Parallel()
	c := setupChain(t, appOptions{})
	c.nextBlock(t, time.Second)

	ctx := c.committed()
	plan := upgradetypes.Plan{Name: chain.UpgradeSettlementCost, Height: c.height + 1}
	require.NoError(t, c.app.UpgradeKeeper.ScheduleUpgrade(ctx, plan))
	again, _ := ctx.CacheContext()
	stores := storeDump(t, c.app, again)
	require.NoError(t, c.app.UpgradeKeeper.ApplyUpgrade(again, plan))
	require.Equal(t, []string{upgradetypes.StoreKey}, changedStores(stores, storeDump(t, c.app, again)))

	c.nextBlock(t, time.Second)
	ctx = c.committed()
	name, height, err := c.app.UpgradeKeeper.GetLastCompletedUpgrade(ctx)
	require.NoError(t, err)
	require.Equal(t, chain.UpgradeSettlementCost, name)
	require.Equal(t, plan.Height, height)
	require.NoError(t, c.app.AssertInvariants(ctx))
}
