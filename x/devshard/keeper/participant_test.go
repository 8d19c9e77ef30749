package keeper_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"cosmossdk.io/collections"
	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	"github.com/cosmos/cosmos-sdk/x/authz"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/x/devshard/keeper"
	"github.com/devshard/devshard/x/devshard/types"
)

func TestRegistrationBondsCollateral(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	srv := keeper.NewMsgServer(b.k)
	b.advanceTo(t, 2)
	h := b.host(0, 1000)

	reg := func(url string, c sdk.Coin) error {
		_, err := srv.RegisterParticipant(b.ctx, &types.MsgRegisterParticipant{Participant: h.String(), Url: url, Collateral: c})
		return err
	}
	require.ErrorIs(t, reg("https://h.example", sdk.NewInt64Coin(denom, 99)), types.ErrInvalidParticipant)
	require.ErrorContains(t, reg("https://h.example", sdk.NewInt64Coin("uatom", 500)), "collateral 500uatom is below the minimum 100ushard")
	require.ErrorContains(t, reg("ftp://h.example", sdk.NewInt64Coin(denom, 100)), "is not an absolute http(s) URL")
	require.ErrorContains(t, reg("h.example:80", sdk.NewInt64Coin(denom, 100)), "is not an absolute http(s) URL")
	require.ErrorIs(t, reg("https://h.example", sdk.NewInt64Coin(denom, 5000)), sdkerrors.ErrInsufficientFunds)
	_, err := srv.RegisterParticipant(b.ctx, &types.MsgRegisterParticipant{Participant: "nope", Url: "https://h.example", Collateral: sdk.NewInt64Coin(denom, 100)})
	require.ErrorContains(t, err, `participant "nope" is not a valid address`)

	require.NoError(t, reg("https://h.example", sdk.NewInt64Coin(denom, 400)))
	require.Equal(t, sdkmath.NewInt(600), b.bank.of(h))
	require.Equal(t, sdkmath.NewInt(400), b.bank.of(moduleAddr()))
	p := b.participant(t, h)
	require.Equal(t, types.ParticipantActive, p.Status)
	require.Equal(t, uint64(1), p.RegisteredEpoch)
	require.Equal(t, uint64(2), p.UpcomingEpoch)

	require.ErrorIs(t, reg("https://h.example", sdk.NewInt64Coin(denom, 100)), types.ErrAlreadyRegistered)
}

func TestLeavingReturnsCollateralAfterServedEpochsClose(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	srv := keeper.NewMsgServer(b.k)
	b.block(1)
	stay, leave, never := b.host(0, 1000), b.host(1, 1000), b.host(2, 1000)
	b.register(t, stay, 100)
	b.register(t, leave, 200)
	b.endBlock(t) // epoch 1 [1,5) ACTIVE with both; closes at 17

	// Registered, never served: the collateral comes back at once.
	b.block(2)
	b.register(t, never, 300)
	res, err := srv.UnregisterParticipant(b.ctx, &types.MsgUnregisterParticipant{Participant: never.String()})
	require.NoError(t, err)
	require.Zero(t, res.UnbondAfterEpoch)
	require.Equal(t, sdkmath.NewInt(1000), b.bank.of(never))
	require.Equal(t, types.ParticipantInactive, b.participant(t, never).Status)
	b.endBlock(t)

	// Served in epoch 1: bonded until epoch 1 closes.
	b.block(3)
	res, err = srv.UnregisterParticipant(b.ctx, &types.MsgUnregisterParticipant{Participant: leave.String()})
	require.NoError(t, err)
	require.Equal(t, uint64(1), res.UnbondAfterEpoch)
	_, err = srv.UnregisterParticipant(b.ctx, &types.MsgUnregisterParticipant{Participant: leave.String()})
	require.ErrorIs(t, err, types.ErrParticipantNotFound)
	_, err = srv.RegisterParticipant(b.ctx, &types.MsgRegisterParticipant{Participant: leave.String(), Url: "https://x.example", Collateral: sdk.NewInt64Coin(denom, 100)})
	require.ErrorIs(t, err, types.ErrCollateralStillBound)
	b.endBlock(t)

	b.advanceTo(t, 5)
	members, err := keeper.NewQueryServer(b.k).EpochMembers(b.ctx, &types.QueryEpochMembersRequest{EpochId: 2})
	require.NoError(t, err)
	require.Len(t, members.Members, 1, "a participant that left is not effective in later epochs")
	require.Equal(t, stay.String(), members.Members[0].Address)

	b.advanceTo(t, 16)
	require.Equal(t, sdkmath.NewInt(800), b.bank.of(leave), "still bonded while epoch 1 is open")
	b.advanceTo(t, 17)
	require.Equal(t, types.EpochClosed, b.state(t, 1))
	require.Equal(t, sdkmath.NewInt(1000), b.bank.of(leave), "returned when epoch 1 closes")
	require.True(t, b.participant(t, leave).Collateral.IsZero())
	require.Equal(t, sdkmath.NewInt(100), b.bank.of(moduleAddr()), "only the staying host's collateral is left")

	// Once returned, the host may register again.
	b.block(18)
	require.Equal(t, uint64(6), b.register(t, leave, 100), "block 18 is in epoch 5")
}

func TestStatsDriveTheInvalidStreakAndStatus(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams()) // three invalid in a row make a host INVALID
	b.block(1)
	h := b.host(0, 1000)
	other := b.host(1, 1000)
	b.register(t, h, 100)
	b.register(t, other, 100)
	b.endBlock(t)

	require.ErrorIs(t, b.k.RecordStats(b.ctx, 2, h, types.InferenceStats{Finished: 1}), types.ErrNotMember)

	require.NoError(t, b.k.RecordStats(b.ctx, 1, h, types.InferenceStats{Finished: 5, Invalidated: 2}))
	require.Equal(t, uint64(2), b.participant(t, h).ConsecutiveInvalidInferences)
	// A batch with validated work ends the old streak; its invalid ones start a new one.
	require.NoError(t, b.k.RecordStats(b.ctx, 1, h, types.InferenceStats{Finished: 4, Validated: 3, Invalidated: 1}))
	require.Equal(t, uint64(1), b.participant(t, h).ConsecutiveInvalidInferences)
	require.Equal(t, types.ParticipantActive, b.participant(t, h).Status)

	require.NoError(t, b.k.RecordStats(b.ctx, 1, h, types.InferenceStats{Invalidated: 2}))
	p := b.participant(t, h)
	require.Equal(t, types.ParticipantInvalid, p.Status, "the streak reached 3")
	require.Zero(t, p.ConsecutiveInvalidInferences, "moving to INVALID resets the streak")

	members, err := keeper.NewQueryServer(b.k).EpochMembers(b.ctx, &types.QueryEpochMembersRequest{EpochId: 1})
	require.NoError(t, err)
	require.Equal(t, types.InferenceStats{Finished: 9, Validated: 3, Invalidated: 5}, members.Members[0].Stats)

	// INVALID sits out epoch 2, then comes back in 3 as a promoted participant.
	b.advanceTo(t, 5)
	require.Equal(t, uint32(1), b.epoch(t, 2).Participants)
	require.Equal(t, uint64(3), b.participant(t, h).UpcomingEpoch)
	b.advanceTo(t, 9)
	p = b.participant(t, h)
	require.Equal(t, types.ParticipantActive, p.Status)
	require.Equal(t, uint64(3), p.LastServedEpoch)
	require.Equal(t, uint32(2), b.epoch(t, 3).Participants)
}

func TestPromotionResetsTheInvalidStreak(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	h := b.host(0, 1000)
	// An upcoming participant that carries a streak from an earlier life.
	require.NoError(t, b.k.Participants.Set(b.ctx, h, types.Participant{
		Address: h.String(), Url: "https://h.example", Collateral: sdk.NewInt64Coin(denom, 100),
		Status: types.ParticipantInvalid, ConsecutiveInvalidInferences: 2, UpcomingEpoch: 1,
	}))
	b.advanceTo(t, 1)
	p := b.participant(t, h)
	require.Equal(t, types.ParticipantActive, p.Status)
	require.Zero(t, p.ConsecutiveInvalidInferences)
	require.Equal(t, types.EpochActive, b.state(t, 1))
}

func TestWarmKeysActThroughAuthzGrants(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	cold, warm, stranger := hostAddr(0), hostAddr(1), hostAddr(2)
	url, ok := types.GrantTypeURL(session.KindFinish)
	require.True(t, ok)
	require.Equal(t, "/devshard.devshard.v1.MsgSignSession", url)

	require.True(t, b.k.MayActFor(b.ctx, cold, cold, session.KindFinish), "an account always acts for itself")
	require.False(t, b.k.MayActFor(b.ctx, cold, warm, session.KindFinish))

	b.authz[cold.String()+"|"+warm.String()+"|"+url] = authz.NewGenericAuthorization(url)
	for _, kind := range []session.Kind{session.KindDiff, session.KindConfirm, session.KindFinish, session.KindValidation, session.KindTimeout, session.KindState} {
		require.True(t, b.k.MayActFor(b.ctx, cold, warm, kind), kind)
	}
	require.False(t, b.k.MayActFor(b.ctx, cold, warm, session.Kind("devshard/v1/unknown")))
	require.False(t, b.k.MayActFor(b.ctx, cold, stranger, session.KindFinish))
	require.False(t, b.k.MayActFor(b.ctx, warm, cold, session.KindFinish), "grants are one-way")

	// Only a generic grant counts: a send grant of the same URL does not.
	b.authz[cold.String()+"|"+stranger.String()+"|"+url] = banktypes.NewSendAuthorization(sdk.NewCoins(sdk.NewInt64Coin(denom, 1)), nil)
	require.False(t, b.k.MayActFor(b.ctx, cold, stranger, session.KindFinish))

	// The session package's hook, over signing addresses.
	var authz session.Authorizer = b.k.Authorizer(b.ctx)
	var c, w signing.Address
	copy(c[:], cold)
	copy(w[:], warm)
	require.True(t, authz.MayActFor(c, w, session.KindValidation))
	require.False(t, authz.MayActFor(w, c, session.KindValidation))

	q := keeper.NewQueryServer(b.k)
	res, err := q.MayActFor(b.ctx, &types.QueryMayActForRequest{Holder: cold.String(), Signer: warm.String(), Kind: string(session.KindState)})
	require.NoError(t, err)
	require.True(t, res.Allowed)
	_, err = q.MayActFor(b.ctx, &types.QueryMayActForRequest{Holder: cold.String(), Signer: warm.String(), Kind: "bogus"})
	require.ErrorContains(t, err, `kind "bogus" is not a session signature kind`)

	_, err = keeper.NewMsgServer(b.k).SignSession(b.ctx, &types.MsgSignSession{Signer: cold.String()})
	require.ErrorIs(t, err, types.ErrNotExecutable)
}

func TestParamsAreGovernanceOnly(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	b.advanceTo(t, 1) // epoch 2 is planned now
	srv := keeper.NewMsgServer(b.k)
	p := testParams()
	p.EpochLength = 10
	_, err := srv.UpdateParams(b.ctx, &types.MsgUpdateParams{Authority: "someone", Params: p})
	require.ErrorIs(t, err, types.ErrInvalidAuthority)
	bad := p
	bad.SettlingEpochs = 0
	_, err = srv.UpdateParams(b.ctx, &types.MsgUpdateParams{Authority: authority, Params: bad})
	require.ErrorContains(t, err, "settling_epochs is 0; it must be at least 1")
	_, err = srv.UpdateParams(b.ctx, &types.MsgUpdateParams{Authority: authority, Params: p})
	require.NoError(t, err)

	// The planned epoch 2 keeps its heights; epoch 3, planned later, uses the new length.
	require.Equal(t, int64(9), b.epoch(t, 2).EndHeight)
	b.advanceTo(t, 5)
	e3 := b.epoch(t, 3)
	require.Equal(t, int64(9), e3.StartHeight)
	require.Equal(t, int64(19), e3.EndHeight)
}

func TestGenesisRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	b.block(1)
	b.register(t, b.host(0, 1000), 100)
	b.register(t, b.host(1, 1000), 100)
	b.endBlock(t)
	b.block(2)
	_, err := b.k.UnregisterParticipant(b.ctx, hostAddr(1))
	require.NoError(t, err)
	require.NoError(t, b.k.RecordStats(b.ctx, 1, hostAddr(0), types.InferenceStats{Finished: 3}))

	gs, err := b.k.ExportGenesis(b.ctx)
	require.NoError(t, err)
	require.NoError(t, gs.Validate())
	require.Equal(t, uint64(1), gs.CurrentEpoch)
	require.Len(t, gs.Epochs, 2)
	require.Len(t, gs.Members, 2)

	fresh := newBundle(t)
	fresh.bank.balances[moduleAddr().String()] = sdk.NewCoins(sdk.NewInt64Coin(denom, 200))
	require.NoError(t, fresh.k.InitGenesis(fresh.ctx, *gs))
	again, err := fresh.k.ExportGenesis(fresh.ctx)
	require.NoError(t, err)
	require.Equal(t, gs, again)
	has, err := fresh.k.Unbonding.Has(fresh.ctx, collections.Join(uint64(1), hostAddr(1)))
	require.NoError(t, err)
	require.True(t, has, "the pending unbonding is rebuilt from the participant")

	// Collateral the module account does not hold is refused.
	poor := newBundle(t)
	require.ErrorContains(t, poor.k.InitGenesis(poor.ctx, *gs), "owe 200ushard but the devshard module account holds only 0ushard")
}
