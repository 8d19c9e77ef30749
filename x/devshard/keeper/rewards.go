package keeper

import (
	"errors"
	"fmt"
	"slices"

	"cosmossdk.io/collections"
	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/devshard/types"
)

// accountEpoch runs when epoch moves to ACCOUNTING. For each member it
// decides punishment from the epoch's stats and the thresholds (a member
// already INVALID through its streak is punished too), moves a punished
// ACTIVE participant to INVALID (which resets its streak), writes its
// EpochPerformanceSummary from the ledger and empties the ledger. A punished
// member's work coins go to the community pool. In an epoch that meets an
// upgrade protection window, missed inferences are forgiven: hosts restarting
// for an upgrade are not punished for it.
func (k Keeper) accountEpoch(ctx sdk.Context, epoch types.Epoch) error {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	epochID := epoch.Id
	upgrade, forgive, err := k.upgradeProtection(ctx, epoch, params.UpgradeProtectionWindow)
	if err != nil {
		return err
	}
	if forgive {
		if err := ctx.EventManager().EmitTypedEvent(&types.EventUpgradeProtection{
			EpochId: epochID, UpgradeHeight: upgrade, Window: params.UpgradeProtectionWindow,
		}); err != nil {
			return err
		}
	}
	type entry struct {
		addr sdk.AccAddress
		m    types.EpochMember
	}
	var members []entry
	if err := k.Members.Walk(ctx, collections.NewPrefixedPairRange[uint64, sdk.AccAddress](epochID),
		func(key collections.Pair[uint64, sdk.AccAddress], m types.EpochMember) (bool, error) {
			members = append(members, entry{key.K2(), m})
			return false, nil
		}); err != nil {
		return err
	}
	for _, e := range members {
		p, err := k.participant(ctx, e.addr)
		if err != nil {
			return err
		}
		punished := p.Status == types.ParticipantInvalid || exceeds(e.m.Stats, params, forgive)
		if punished && p.Status == types.ParticipantActive {
			if err := k.setStatus(ctx, &p, types.ParticipantInvalid); err != nil {
				return err
			}
			if err := k.Participants.Set(ctx, e.addr, p); err != nil {
				return err
			}
		}
		sum := types.EpochPerformanceSummary{
			EpochId: epochID, Address: e.m.Address, Stats: e.m.Stats, Earned: e.m.Earned, Punished: punished,
		}
		if !punished {
			sum.Rewarded = e.m.Earned
		} else if e.m.Earned > 0 {
			if err := k.toCommunityPool(ctx, epochID, e.addr, e.m.Earned, "punished at accounting"); err != nil {
				return err
			}
		}
		if err := k.Summaries.Set(ctx, collections.Join(epochID, e.addr), sum); err != nil {
			return err
		}
		e.m.Earned = 0
		if err := k.Members.Set(ctx, collections.Join(epochID, e.addr), e.m); err != nil {
			return err
		}
		if err := ctx.EventManager().EmitTypedEvent(&types.EventMemberAccounted{
			EpochId: epochID, Address: e.m.Address, Earned: sum.Earned, Rewarded: sum.Rewarded, Punished: punished,
			MissedForgiven: forgive,
		}); err != nil {
			return err
		}
	}
	return nil
}

// exceeds reports whether stats break a punishment threshold: missed /
// (finished + missed) or invalidated / finished (any invalidated inference
// with none finished counts as 100%) above its limit in basis points.
// forgiveMissed drops the missed threshold (upgrade protection); an
// invalidated inference is wrong work, not downtime, and always counts.
func exceeds(s types.InferenceStats, p types.Params, forgiveMissed bool) bool {
	over := func(part, whole uint64, bps uint32) bool {
		if part == 0 {
			return false
		}
		if whole == 0 {
			return true
		}
		lhs := sdkmath.NewIntFromUint64(part).MulRaw(10_000)
		rhs := sdkmath.NewIntFromUint64(whole).MulRaw(int64(bps))
		return lhs.GT(rhs)
	}
	assigned := sdkmath.NewIntFromUint64(s.Finished).Add(sdkmath.NewIntFromUint64(s.Missed))
	missedOver := !forgiveMissed && s.Missed > 0 && sdkmath.NewIntFromUint64(s.Missed).MulRaw(10_000).GT(assigned.MulRaw(int64(p.MaxMissedRatioBps)))
	return missedOver || over(s.Invalidated, s.Finished, p.MaxInvalidRatioBps)
}

// ClaimRewards pays addr's reward for a CLAIMABLE epoch, once.
func (k Keeper) ClaimRewards(ctx sdk.Context, addr sdk.AccAddress, epochID uint64) (uint64, error) {
	epoch, err := k.Epoch(ctx, epochID)
	if err != nil {
		return 0, err
	}
	if epoch.State != types.EpochClaimable {
		return 0, types.ErrNotClaimable.Wrapf("epoch %d is %s; rewards are claimed while it is CLAIMABLE", epochID, epoch.State.Short())
	}
	key := collections.Join(epochID, addr)
	sum, err := k.Summaries.Get(ctx, key)
	if errors.Is(err, collections.ErrNotFound) {
		return 0, types.ErrNotClaimable.Wrapf("%s has no performance summary in epoch %d: it was not a member", addr, epochID)
	} else if err != nil {
		return 0, err
	}
	switch {
	case sum.Claimed:
		return 0, types.ErrAlreadyClaimed.Wrapf("%s already claimed epoch %d", addr, epochID)
	case sum.Punished:
		return 0, types.ErrNotClaimable.Wrapf("%s was punished in epoch %d: its work coins went to the community pool", addr, epochID)
	}
	params, err := k.Params.Get(ctx)
	if err != nil {
		return 0, err
	}
	if sum.Rewarded > 0 {
		if err := k.bank.SendCoinsFromModuleToAccount(ctx, types.ModuleName, addr, coinsOf(params.MinCollateral.Denom, sum.Rewarded)); err != nil {
			return 0, err
		}
	}
	sum.Claimed = true
	if err := k.Summaries.Set(ctx, key, sum); err != nil {
		return 0, err
	}
	return sum.Rewarded, ctx.EventManager().EmitTypedEvent(&types.EventRewardsClaimed{EpochId: epochID, Address: sum.Address, Amount: sum.Rewarded})
}

// sweepUnclaimed runs when epoch CLOSES: every reward not claimed in the
// window goes to the community pool.
func (k Keeper) sweepUnclaimed(ctx sdk.Context, epochID uint64) error {
	return k.settleSummaries(ctx, epochID, func(addr sdk.AccAddress, amount uint64) error {
		return k.toCommunityPool(ctx, epochID, addr, amount, "unclaimed when the epoch closed")
	})
}

// payOutCancelled runs when an epoch is CANCELLED: the work already settled
// was done, so an epoch not yet accounted is accounted now, and every
// unclaimed reward is sent to its host.
func (k Keeper) payOutCancelled(ctx sdk.Context, epoch types.Epoch) error {
	if epoch.State == types.EpochActive || epoch.State == types.EpochSettling {
		if err := k.accountEpoch(ctx, epoch); err != nil {
			return err
		}
	}
	params, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	return k.settleSummaries(ctx, epoch.Id, func(addr sdk.AccAddress, amount uint64) error {
		if err := k.bank.SendCoinsFromModuleToAccount(ctx, types.ModuleName, addr, coinsOf(params.MinCollateral.Denom, amount)); err != nil {
			return err
		}
		return ctx.EventManager().EmitTypedEvent(&types.EventRewardsClaimed{EpochId: epoch.Id, Address: addr.String(), Amount: amount})
	})
}

// settleSummaries hands every unclaimed reward of epoch to pay and marks it
// swept.
func (k Keeper) settleSummaries(ctx sdk.Context, epochID uint64, pay func(sdk.AccAddress, uint64) error) error {
	type entry struct {
		addr sdk.AccAddress
		sum  types.EpochPerformanceSummary
	}
	var open []entry
	if err := k.Summaries.Walk(ctx, collections.NewPrefixedPairRange[uint64, sdk.AccAddress](epochID),
		func(key collections.Pair[uint64, sdk.AccAddress], s types.EpochPerformanceSummary) (bool, error) {
			if !s.Claimed && !s.Swept {
				open = append(open, entry{key.K2(), s})
			}
			return false, nil
		}); err != nil {
		return err
	}
	for _, e := range open {
		if e.sum.Rewarded > 0 {
			if err := pay(e.addr, e.sum.Rewarded); err != nil {
				return err
			}
		}
		e.sum.Swept = true
		if err := k.Summaries.Set(ctx, collections.Join(epochID, e.addr), e.sum); err != nil {
			return err
		}
	}
	return nil
}

func (k Keeper) toCommunityPool(ctx sdk.Context, epochID uint64, addr sdk.AccAddress, amount uint64, reason string) error {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	if err := k.distr.FundCommunityPool(ctx, coinsOf(params.MinCollateral.Denom, amount), moduleAddress); err != nil {
		return fmt.Errorf("funding the community pool with %d (%s, epoch %d): %w", amount, addr, epochID, err)
	}
	return ctx.EventManager().EmitTypedEvent(&types.EventCommunityPoolFunded{EpochId: epochID, Address: addr.String(), Amount: amount, Reason: reason})
}

// coinsOf is amount of denom as Coins; zero is no coins.
func coinsOf(denom string, amount uint64) sdk.Coins {
	return sdk.NewCoins(sdk.NewCoin(denom, sdkmath.NewIntFromUint64(amount)))
}

// owed is what the module account owes, by kind: open escrows (pending
// settlements included) in their own denoms, ledgers of epochs not yet
// accounted and unclaimed summaries in the collateral denom (UpdateParams
// keeps that denom while they hold anything), and bonded collateral.
type owed struct{ escrows, ledgers, unclaimed, bonded sdk.Coins }

func (k Keeper) owed(ctx sdk.Context, denom string) (o owed, err error) {
	addEscrow := func(id uint64) (bool, error) {
		e, err := k.Escrows.Get(ctx, id)
		if err != nil {
			return true, err
		}
		o.escrows = o.escrows.Add(e.Coins(e.Snapshot.Amount)...)
		return false, nil
	}
	// Every OPEN escrow is in exactly one of the two: the expiry index, or
	// the pending set while a settlement waits out its window.
	if err = k.EscrowExpiry.Walk(ctx, nil, func(key collections.Pair[uint64, uint64]) (bool, error) {
		return addEscrow(key.K2())
	}); err != nil {
		return o, err
	}
	if err = k.Pending.Walk(ctx, nil, addEscrow); err != nil {
		return o, err
	}
	if err = k.Members.Walk(ctx, nil, func(_ collections.Pair[uint64, sdk.AccAddress], m types.EpochMember) (bool, error) {
		o.ledgers = o.ledgers.Add(coinsOf(denom, m.Earned)...)
		return false, nil
	}); err != nil {
		return o, err
	}
	if err = k.Summaries.Walk(ctx, nil, func(_ collections.Pair[uint64, sdk.AccAddress], s types.EpochPerformanceSummary) (bool, error) {
		if !s.Claimed && !s.Swept {
			o.unclaimed = o.unclaimed.Add(coinsOf(denom, s.Rewarded)...)
		}
		return false, nil
	}); err != nil {
		return o, err
	}
	err = k.Participants.Walk(ctx, nil, func(_ sdk.AccAddress, p types.Participant) (bool, error) {
		o.bonded = o.bonded.Add(p.Collateral)
		return false, nil
	})
	return o, err
}

// Conservation sums both sides of the module account's books, per denom:
// its balance, and what it owes (open escrows, pending settlements included,
// ledgers of epochs not yet accounted, unclaimed summaries, bonded
// collateral).
func (k Keeper) Conservation(ctx sdk.Context) (balance sdk.Coins, res types.QueryConservationResponse, err error) {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return nil, res, err
	}
	denom := params.MinCollateral.Denom
	o, err := k.owed(ctx, denom)
	if err != nil {
		return nil, res, err
	}
	total := o.escrows.Add(o.ledgers...).Add(o.unclaimed...).Add(o.bonded...)
	denoms := total.Denoms()
	if !slices.Contains(denoms, denom) {
		denoms = append(denoms, denom)
	}
	for _, d := range denoms {
		balance = balance.Add(k.bank.GetBalance(ctx, moduleAddress, d))
	}
	return balance, types.QueryConservationResponse{
		Balance: balance.String(), Owed: total.String(),
		OpenEscrows: o.escrows.String(), Ledgers: o.ledgers.String(), Unclaimed: o.unclaimed.String(), Bonded: o.bonded.String(),
	}, nil
}

// CheckDenomChange refuses a new collateral denom while the module owes
// anything but collateral in the old one. Escrows lock the denom of their
// creation, and the ledgers, summaries, claims and sweeps they feed carry
// no denom of their own: they are paid in the collateral denom. A change
// while they hold coins would have them paid in coins the module never
// received. Bonded collateral keeps its own denom and is returned in it.
func (k Keeper) CheckDenomChange(ctx sdk.Context, next types.Params) error {
	cur, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	from, to := cur.MinCollateral.Denom, next.MinCollateral.Denom
	if from == to {
		return nil
	}
	o, err := k.owed(ctx, from)
	if err != nil {
		return err
	}
	held := o.escrows.Add(o.ledgers...).Add(o.unclaimed...)
	if held.AmountOf(from).IsZero() {
		return nil
	}
	return types.ErrInvalidParams.Wrapf(
		"min_collateral's denom cannot change from %s to %s while the module owes %s in it (open escrows %s, ledgers %s, unclaimed rewards %s), which are paid in %s; change it once they are settled or expired, accounted, and claimed or swept, or convert them in a software upgrade",
		from, to, sdk.NewCoin(from, held.AmountOf(from)), o.escrows, o.ledgers, o.unclaimed, from)
}

// ConservationInvariant checks that the module account holds exactly what it
// owes.
func ConservationInvariant(k Keeper) sdk.Invariant {
	return func(ctx sdk.Context) (string, bool) {
		balance, owed, err := k.Conservation(ctx)
		if err != nil {
			return sdk.FormatInvariant(types.ModuleName, "conservation", err.Error()), true
		}
		broken := balance.String() != owed.Owed
		return sdk.FormatInvariant(types.ModuleName, "conservation", fmt.Sprintf(
			"module balance %s, owed %s (open escrows %s + ledgers %s + unclaimed %s + bonded %s)",
			owed.Balance, owed.Owed, owed.OpenEscrows, owed.Ledgers, owed.Unclaimed, owed.Bonded)), broken
	}
}

// RegisterInvariants registers the module's invariants.
func RegisterInvariants(ir sdk.InvariantRegistry, k Keeper) {
	ir.RegisterRoute(types.ModuleName, "conservation", ConservationInvariant(k))
}
