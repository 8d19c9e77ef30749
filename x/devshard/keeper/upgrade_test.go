package keeper_test

import (
	"fmt"
	"slices"
	"testing"

	abci "github.com/cometbft/cometbft/abci/types"
	"github.com/stretchr/testify/require"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/devshard/types"
)

// Upgrade protection (docs/chain.md, "Upgrade protection"): at accounting,
// an epoch whose span [start_height, accounting_height) meets the window
// [U, U + upgrade_protection_window) of an upgrade applied at height U does
// not punish missed inferences. Invalidated inferences still count, and the
// work is paid as always.
//
// Heights with testParams: epoch N spans [4N-3, 4N+5), so epoch 1 is
// [1, 9) and is accounted at the end of block 9; epoch 3 is [9, 17).

// protectionRun is one chain of the tests below: a host of the world that
// earned pay in epoch and, on top, had stats (misses, say) settled in it.
type protectionRun struct {
	w    *world
	host sdk.AccAddress
	// pay is what the host earned in the epoch.
	pay uint64
	// workedAt is the block the session was settled in.
	workedAt int64
	// accounted is the epoch's accounting height.
	accounted int64
}

// runToAccounting builds a world with the given window and applies an
// upgrade at each height in upgrades (3 or later: the world starts at 2).
// In block workAt (0: the epoch's first block after its activation), after
// any upgrade there, it settles an honest session of an escrow of epoch and
// adds stats to the best-paid host's settled stats. Then it runs the chain
// to the end of the epoch's accounting block.
func runToAccounting(t *testing.T, window uint64, upgrades []int64, epoch uint64, workAt int64, stats types.InferenceStats) protectionRun {
	t.Helper()
	w := newWorld(t, func(p *types.Params) { p.UpgradeProtectionWindow = window })
	e := w.epoch(t, 1)
	require.Equal(t, int64(1), e.StartHeight, "the heights in this file assume testParams")
	require.Equal(t, int64(9), e.AccountingHeight)

	start := int64(4*epoch - 3)
	run := protectionRun{w: w, accounted: start + 8}
	upgradeTo := func(h int64) {
		for _, u := range upgrades {
			if u > w.ctx.BlockHeight() && u <= h {
				w.advanceTo(t, u-1)
				w.block(u)
				w.upgrade(fmt.Sprintf("v-at-%d", u))
				w.endBlock(t)
			}
		}
		w.advanceTo(t, h)
	}

	if workAt == 0 {
		workAt = max(start+1, w.ctx.BlockHeight())
	}
	upgradeTo(workAt)
	require.Equal(t, types.EpochActive, w.state(t, epoch))
	run.workedAt = w.ctx.BlockHeight()
	esc := w.create(t, 100_000)
	require.Equal(t, epoch+uint64(testParams().ExpiryEpochs), esc.ExpiryEpoch, "an escrow of the epoch")
	_, m := w.honest(t, esc, 6)
	pay := payouts(plan(t, esc, m))
	_, err := w.settle(w.gw, m)
	require.NoError(t, err)
	for _, h := range w.hosts {
		if pay[h.String()] > run.pay {
			run.host, run.pay = h, pay[h.String()]
		}
	}
	require.NotZero(t, run.pay)
	require.NoError(t, w.k.RecordStats(w.ctx, epoch, run.host, stats))

	upgradeTo(run.accounted)
	require.Equal(t, types.EpochAccounting, w.state(t, epoch))
	return run
}

// protected reports whether the accounting block emitted
// EventUpgradeProtection for epoch, and whether each EventMemberAccounted of
// host said its misses were forgiven.
func (r protectionRun) protected(t *testing.T, epoch uint64) (epochEvent, memberEvent bool) {
	t.Helper()
	for _, ev := range r.w.ctx.EventManager().Events() {
		msg, err := sdk.ParseTypedEvent(abci.Event(ev))
		if err != nil {
			continue
		}
		switch e := msg.(type) {
		case *types.EventUpgradeProtection:
			if e.EpochId == epoch {
				epochEvent = true
			}
		case *types.EventMemberAccounted:
			if e.EpochId == epoch && e.Address == r.host.String() {
				memberEvent = e.MissedForgiven
			}
		}
	}
	return epochEvent, memberEvent
}

// requireRewarded checks the host kept its pay and its status.
func (r protectionRun) requireRewarded(t *testing.T, epoch uint64) {
	t.Helper()
	sum := r.w.summary(t, epoch, r.host)
	require.False(t, sum.Punished)
	require.Equal(t, r.pay, sum.Earned)
	require.Equal(t, r.pay, sum.Rewarded, "the work is paid")
	require.Equal(t, types.ParticipantActive, r.w.participant(t, r.host).Status)
	require.Zero(t, r.w.bal(communityPool()))
	r.w.conserved(t)
}

// requirePunished checks the host lost its pay to the community pool and
// became INVALID.
func (r protectionRun) requirePunished(t *testing.T, epoch uint64) {
	t.Helper()
	sum := r.w.summary(t, epoch, r.host)
	require.True(t, sum.Punished)
	require.Zero(t, sum.Rewarded)
	require.Equal(t, types.ParticipantInvalid, r.w.participant(t, r.host).Status)
	require.Equal(t, r.pay, r.w.bal(communityPool()))
	r.w.conserved(t)
}

var fiftyMissed = types.InferenceStats{Missed: 50}

// The rule, row by row. The rows that punish are the same chain as a row
// that forgives, with the upgrade moved out of reach or the window off.
func TestUpgradeProtectionForgivesMissesInTheWindow(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		window   uint64
		upgrades []int64
		epoch    uint64
		stats    types.InferenceStats
		forgiven bool
		punished bool
	}{
		{"no upgrade: misses are punished", 3, nil, 1, fiftyMissed, false, true},
		{"upgrade in the epoch's active window", 3, []int64{3}, 1, fiftyMissed, true, false},
		{"upgrade while the epoch's escrows settle", 3, []int64{7}, 1, fiftyMissed, true, false},
		{"an earlier upgrade's window reaches the epoch's first block", 7, []int64{3}, 3, fiftyMissed, true, false},
		{"an earlier upgrade's window ended the block before the epoch", 6, []int64{3}, 3, fiftyMissed, false, true},
		{"an upgrade at the accounting height is after the span", 3, []int64{9}, 1, fiftyMissed, false, true},
		// x/upgrade only knows the last upgrade: at block 9 that is the one
		// at 9, outside the span; the one at 7 must still count.
		{"a later upgrade does not hide an earlier one", 3, []int64{7, 9}, 1, fiftyMissed, true, false},
		{"window 0 switches protection off", 0, []int64{3}, 1, fiftyMissed, false, true},
		// Wrong answers are not downtime: 2 invalidated of at most 6
		// finished is above max_invalid_ratio_bps (10%).
		{"invalidated inferences still count in the window", 3, []int64{3}, 1, types.InferenceStats{Invalidated: 2}, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := runToAccounting(t, c.window, c.upgrades, c.epoch, 0, c.stats)
			epochEvent, memberEvent := r.protected(t, c.epoch)
			require.Equal(t, c.forgiven, epochEvent, "EventUpgradeProtection")
			require.Equal(t, c.forgiven, memberEvent, "EventMemberAccounted.missed_forgiven")
			if c.punished {
				r.requirePunished(t, c.epoch)
			} else {
				r.requireRewarded(t, c.epoch)
			}
		})
	}
}

// Work done inside the window is paid: the host that missed inferences
// there claims the pay of the session it served after the upgrade.
func TestUpgradeProtectionPaysWorkDoneInTheWindow(t *testing.T) {
	t.Parallel()
	// The upgrade applies at 3, and the escrow is created and settled in
	// block 3, after it: inside the window [3, 6).
	r := runToAccounting(t, 3, []int64{3}, 1, 3, fiftyMissed)
	require.Equal(t, int64(3), r.workedAt)
	r.requireRewarded(t, 1)

	r.w.advanceTo(t, 14) // CLAIMABLE
	before := r.w.bal(r.host)
	res, err := r.w.srv.ClaimRewards(r.w.ctx, &types.MsgClaimRewards{Participant: r.host.String(), EpochId: 1})
	require.NoError(t, err)
	require.Equal(t, r.pay, res.Amount)
	require.Equal(t, before+r.pay, r.w.bal(r.host))
	r.w.conserved(t)
}

// The same misses after the same upgrade: forgiven with the default window,
// punished with the window set to 0.
func TestUpgradeProtectionWindowZeroDisablesIt(t *testing.T) {
	t.Parallel()
	on := runToAccounting(t, types.DefaultParams().UpgradeProtectionWindow, []int64{3}, 1, 0, fiftyMissed)
	on.requireRewarded(t, 1)
	off := runToAccounting(t, 0, []int64{3}, 1, 0, fiftyMissed)
	off.requirePunished(t, 1)
}

// The module records each upgrade once, from x/upgrade's last completed
// upgrade, and carries the heights through genesis.
func TestUpgradeHeightsAreRecordedAndExported(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	b.advanceTo(t, 2)
	b.block(3)
	b.upgrade("v-next")
	b.endBlock(t)
	b.advanceTo(t, 6)
	b.block(7)
	b.upgrade("v-fix")
	b.endBlock(t)
	b.advanceTo(t, 8)

	gs, err := b.k.ExportGenesis(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []int64{3, 7}, gs.UpgradeHeights)

	fresh := newBundle(t)
	require.NoError(t, fresh.k.InitGenesis(fresh.ctx, *gs))
	again, err := fresh.k.ExportGenesis(fresh.ctx)
	require.NoError(t, err)
	require.Equal(t, gs.UpgradeHeights, again.UpgradeHeights)

	for _, bad := range [][]int64{{7, 3}, {3, 3}, {0}, {-1}} {
		gs.UpgradeHeights = slices.Clone(bad)
		require.ErrorIs(t, gs.Validate(), types.ErrInvalidGenesis, "%v", bad)
		require.ErrorContains(t, gs.Validate(), "strictly ascending")
	}
}
