package chain_test

import (
	"fmt"
	"testing"
	"time"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	dbm "github.com/cosmos/cosmos-db"
	"github.com/stretchr/testify/require"

	"cosmossdk.io/log"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

func TestUpgradeEscrowsIsIdempotent(t *testing.T) {
	t.Parallel()
	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, true, noOptions{})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ctx := app.NewUncachedContext(false, cmtproto.Header{Time: now, Height: 10})

	// The previous version's params: no escrow fields.
	old := devshardtypes.DefaultParams()
	old = devshardtypes.Params{EpochLength: old.EpochLength, SettlingEpochs: 1, AccountingEpochs: 1, ClaimableEpochs: 2,
		MinCollateral: old.MinCollateral, MaxConsecutiveInvalid: 10}
	require.NoError(t, app.DevshardKeeper.Params.Set(ctx, old))

	addr := func(s string) sdk.AccAddress { return sdk.AccAddress(fmt.Appendf(nil, "%-20s", s)) }
	sign := sdk.MsgTypeURL(&devshardtypes.MsgSignSession{})
	claim := sdk.MsgTypeURL(&devshardtypes.MsgClaimRewards{})
	later, otherExp := now.Add(time.Hour), now.Add(2*time.Hour)
	save := func(ctx sdk.Context, granter, grantee string, a authz.Authorization, exp *time.Time) {
		require.NoError(t, app.AuthzKeeper.SaveGrant(ctx, addr(grantee), addr(granter), a, exp))
	}
	save(ctx, "cold1", "warm1", authz.NewGenericAuthorization(sign), nil)
	save(ctx, "cold2", "warm2", authz.NewGenericAuthorization(sign), &later)
	save(ctx, "cold2", "warm2b", authz.NewGenericAuthorization(sign), nil) // two warm keys
	past := now.Add(-time.Hour)
	save(ctx.WithBlockTime(now.Add(-2*time.Hour)), "cold3", "warm3", authz.NewGenericAuthorization(sign), &past) // expired
	save(ctx, "cold4", "warm4", banktypes.NewSendAuthorization(sdk.NewCoins(sdk.NewInt64Coin("ushard", 5)), nil), nil)
	save(ctx, "cold5", "warm5", authz.NewGenericAuthorization(sign), &later)
	save(ctx, "cold5", "warm5", authz.NewGenericAuthorization(claim), &otherExp) // already there

	grants := func() map[string]string {
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
	before := grants()

	require.NoError(t, chain.MigrateEscrows(ctx, app.DevshardKeeper, app.AuthzKeeper))
	first := grants()
	p1, err := app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.NoError(t, p1.Validate())
	require.Equal(t, uint64(chain.UpgradeMaxEscrowsPerEpoch), p1.MaxEscrowsPerEpoch)
	require.Equal(t, uint64(chain.UpgradeMaxNonce), p1.MaxNonce)
	require.Equal(t, devshardtypes.DefaultParams().GroupSize, p1.GroupSize)
	require.Equal(t, old.EpochLength, p1.EpochLength)

	key := func(granter, grantee, url string) string {
		return fmt.Sprintf("%s>%s %s", addr(granter), addr(grantee), url)
	}
	added := map[string]string{}
	for k, v := range first {
		if _, ok := before[k]; !ok {
			added[k] = v
		}
	}
	require.Equal(t, map[string]string{
		key("cold1", "warm1", claim):  "never",
		key("cold2", "warm2", claim):  later.Format(time.RFC3339),
		key("cold2", "warm2b", claim): "never",
	}, added, "a claim grant per live source grant, with its expiration; none for the expired, the non-source and the already granted pair")
	require.Equal(t, otherExp.Format(time.RFC3339), first[key("cold5", "warm5", claim)], "an existing grant is left alone")

	require.NoError(t, chain.MigrateEscrows(ctx, app.DevshardKeeper, app.AuthzKeeper))
	p2, err := app.DevshardKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, p1, p2, "the second run changes no param")
	require.Equal(t, first, grants(), "the second run adds no grant")
}
