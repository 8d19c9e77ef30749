package keeper

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"cosmossdk.io/collections"
	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/devshard/types"
)

const maxURLLen = 256

// RegisterParticipant bonds collateral from addr into the module account and
// records addr as upcoming: effective from the epoch after the current one.
// It returns that epoch.
func (k Keeper) RegisterParticipant(ctx context.Context, addr sdk.AccAddress, rawURL string, collateral sdk.Coin) (uint64, error) {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return 0, err
	}
	if err := checkURL(rawURL); err != nil {
		return 0, err
	}
	if collateral.Denom != params.MinCollateral.Denom || collateral.Amount.IsNil() || collateral.Amount.LT(params.MinCollateral.Amount) {
		return 0, types.ErrInvalidParticipant.Wrapf("collateral %s is below the minimum %s; bond at least that much in %s",
			collateral, params.MinCollateral, params.MinCollateral.Denom)
	}

	prev, err := k.Participants.Get(ctx, addr)
	switch {
	case errors.Is(err, collections.ErrNotFound):
	case err != nil:
		return 0, err
	case prev.Status != types.ParticipantInactive:
		return 0, types.ErrAlreadyRegistered.Wrapf("%s is already registered (status %s); unregister first to change its registration",
			addr, prev.Status)
	case !prev.Collateral.IsNil() && prev.Collateral.IsPositive():
		return 0, types.ErrCollateralStillBound.Wrapf("%s left and its collateral %s stays bonded until epoch %d and all before it are closed; register again after it is returned",
			addr, prev.Collateral, prev.UnbondAfterEpoch)
	}

	if err := k.bank.SendCoinsFromAccountToModule(ctx, addr, types.ModuleName, sdk.NewCoins(collateral)); err != nil {
		return 0, fmt.Errorf("bonding collateral %s from %s: %w", collateral, addr, err)
	}
	current, err := k.currentEpochID(ctx)
	if err != nil {
		return 0, err
	}
	p := types.Participant{
		Address:         addr.String(),
		Url:             rawURL,
		Collateral:      collateral,
		Status:          types.ParticipantActive,
		RegisteredEpoch: current,
		UpcomingEpoch:   current + 1,
		LastServedEpoch: prev.LastServedEpoch, // a returning participant's past service still counts for unbonding
	}
	if err := k.Participants.Set(ctx, addr, p); err != nil {
		return 0, err
	}
	return p.UpcomingEpoch, sdk.UnwrapSDKContext(ctx).EventManager().EmitTypedEvent(&types.EventParticipantRegistered{
		Address: p.Address, Collateral: collateral, UpcomingEpoch: p.UpcomingEpoch,
	})
}

func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(raw) > maxURLLen {
		return types.ErrInvalidParticipant.Wrapf("url %q is not an absolute http(s) URL of at most %d bytes, such as https://host.example:8080", raw, maxURLLen)
	}
	return nil
}

func (k Keeper) currentEpochID(ctx context.Context) (uint64, error) {
	id, err := k.CurrentEpoch.Get(ctx)
	if errors.Is(err, collections.ErrNotFound) {
		return 0, nil // before epoch 1 begins
	}
	return id, err
}

// UnregisterParticipant makes addr INACTIVE. It is never effective again; its
// collateral comes back at once if it never served, or else when every epoch
// it served in is final. It returns the epoch the release waits for (0 if
// released now).
func (k Keeper) UnregisterParticipant(ctx context.Context, addr sdk.AccAddress) (uint64, error) {
	p, err := k.participant(ctx, addr)
	if err != nil {
		return 0, err
	}
	if p.Status == types.ParticipantInactive {
		return 0, types.ErrParticipantNotFound.Wrapf("%s has already left", addr)
	}
	if err := k.setStatus(ctx, &p, types.ParticipantInactive); err != nil {
		return 0, err
	}
	p.UpcomingEpoch = 0
	p.UnbondAfterEpoch = p.LastServedEpoch
	oldest, err := k.oldestOpenEpoch(ctx)
	if err != nil {
		return 0, err
	}
	if p.LastServedEpoch < oldest {
		return 0, k.release(ctx, addr, p)
	}
	if err := k.Participants.Set(ctx, addr, p); err != nil {
		return 0, err
	}
	return p.UnbondAfterEpoch, k.Unbonding.Set(ctx, collections.Join(p.UnbondAfterEpoch, addr))
}

// releaseUnbonded returns the collateral of every participant that left and
// whose served epochs are all final. Entries are ordered by that epoch, so
// only the released ones are read.
func (k Keeper) releaseUnbonded(ctx context.Context) error {
	oldest, err := k.oldestOpenEpoch(ctx)
	if err != nil || oldest == 0 {
		return err
	}
	var due []sdk.AccAddress
	if err := k.Unbonding.Walk(ctx, collections.NewPrefixUntilPairRange[uint64, sdk.AccAddress](oldest-1),
		func(key collections.Pair[uint64, sdk.AccAddress]) (bool, error) {
			due = append(due, key.K2())
			return false, nil
		}); err != nil {
		return err
	}
	for _, addr := range due {
		p, err := k.participant(ctx, addr)
		if err != nil {
			return err
		}
		if err := k.Unbonding.Remove(ctx, collections.Join(p.UnbondAfterEpoch, addr)); err != nil {
			return err
		}
		if err := k.release(ctx, addr, p); err != nil {
			return err
		}
	}
	return nil
}

func (k Keeper) release(ctx context.Context, addr sdk.AccAddress, p types.Participant) error {
	if p.Collateral.IsPositive() {
		if err := k.bank.SendCoinsFromModuleToAccount(ctx, types.ModuleName, addr, sdk.NewCoins(p.Collateral)); err != nil {
			return fmt.Errorf("returning collateral %s to %s: %w", p.Collateral, addr, err)
		}
	}
	released := p.Collateral
	p.Collateral = sdk.NewCoin(p.Collateral.Denom, sdkmath.ZeroInt())
	if err := k.Participants.Set(ctx, addr, p); err != nil {
		return err
	}
	return sdk.UnwrapSDKContext(ctx).EventManager().EmitTypedEvent(&types.EventCollateralReleased{
		Address: p.Address, Collateral: released,
	})
}

// candidate is a participant to make effective in an epoch.
type candidate struct {
	addr    sdk.AccAddress
	p       types.Participant
	promote bool // upcoming now, effective from this epoch
}

// selectMembers picks the participants effective in epoch: the ACTIVE ones
// already serving, plus the upcoming ones due by now. An INVALID participant
// sits this epoch out and is queued as upcoming for the next one.
func (k Keeper) selectMembers(ctx sdk.Context, epoch uint64) ([]candidate, error) {
	var (
		members []candidate
		requeue []candidate
	)
	err := k.Participants.Walk(ctx, nil, func(addr sdk.AccAddress, p types.Participant) (bool, error) {
		switch {
		case p.Status == types.ParticipantInactive:
		case p.UpcomingEpoch != 0:
			if p.UpcomingEpoch <= epoch {
				members = append(members, candidate{addr: addr, p: p, promote: true})
			}
		case p.Status == types.ParticipantInvalid:
			requeue = append(requeue, candidate{addr: addr, p: p})
		case p.Status == types.ParticipantActive:
			members = append(members, candidate{addr: addr, p: p})
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	for _, c := range requeue {
		c.p.UpcomingEpoch = epoch + 1
		if err := k.Participants.Set(ctx, c.addr, c.p); err != nil {
			return nil, err
		}
	}
	return members, nil
}

// makeEffective records members as effective in epoch. Promotion makes a
// participant ACTIVE and resets its invalid streak, so a restored
// participant does not carry an old one.
func (k Keeper) makeEffective(ctx sdk.Context, epoch *types.Epoch, members []candidate) error {
	total := sdkmath.ZeroInt()
	for _, c := range members {
		p := c.p
		if c.promote {
			if err := k.setStatus(ctx, &p, types.ParticipantActive); err != nil {
				return err
			}
			p.UpcomingEpoch = 0
			p.ConsecutiveInvalidInferences = 0
			if err := ctx.EventManager().EmitTypedEvent(&types.EventParticipantPromoted{Address: p.Address, EpochId: epoch.Id}); err != nil {
				return err
			}
		}
		p.LastServedEpoch = epoch.Id
		if err := k.Participants.Set(ctx, c.addr, p); err != nil {
			return err
		}
		weight := p.Collateral.Amount
		if err := k.Members.Set(ctx, collections.Join(epoch.Id, c.addr), types.EpochMember{
			EpochId: epoch.Id,
			Address: p.Address,
			Url:     p.Url,
			Weight:  weight,
		}); err != nil {
			return err
		}
		total = total.Add(weight)
	}
	epoch.Participants = uint32(len(members))
	epoch.TotalWeight = total
	return nil
}

// setStatus changes p's status in memory and emits the event; the caller
// stores p. Moving to INVALID resets the invalid streak.
func (k Keeper) setStatus(ctx context.Context, p *types.Participant, to types.ParticipantStatus) error {
	from := p.Status
	if from == to {
		return nil
	}
	p.Status = to
	if to == types.ParticipantInvalid {
		p.ConsecutiveInvalidInferences = 0
	}
	return sdk.UnwrapSDKContext(ctx).EventManager().EmitTypedEvent(&types.EventParticipantStatus{
		Address: p.Address, From: from, To: to,
	})
}

// RecordStats adds settled stats to addr's record in epoch, with no coins.
func (k Keeper) RecordStats(ctx context.Context, epoch uint64, addr sdk.AccAddress, s types.InferenceStats) error {
	return k.pay(ctx, epoch, addr, 0, s)
}

// pay is the one payment function of an epoch not yet accounted: it credits
// amount to addr's ledger in epoch (credit), then updates the invalid streak
// (recordStreak). The coins stay in the module account until accounting
// moves them to the epoch's summary and the participant claims them.
func (k Keeper) pay(ctx context.Context, epoch uint64, addr sdk.AccAddress, amount uint64, s types.InferenceStats) error {
	if err := k.credit(ctx, epoch, addr, amount, s); err != nil {
		return err
	}
	params, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	return k.recordStreak(ctx, addr, params.MaxConsecutiveInvalid, s)
}

// credit adds amount to addr's ledger in epoch (EpochMember.earned) and the
// settled stats to its record, every sum overflow-checked. ErrNotMember:
// addr is not effective in epoch.
func (k Keeper) credit(ctx context.Context, epoch uint64, addr sdk.AccAddress, amount uint64, s types.InferenceStats) error {
	key := collections.Join(epoch, addr)
	m, err := k.Members.Get(ctx, key)
	if errors.Is(err, collections.ErrNotFound) {
		return types.ErrNotMember.Wrapf("%s is not effective in epoch %d", addr, epoch)
	}
	if err != nil {
		return err
	}
	earned, ok := addU64(m.Earned, amount)
	if !ok {
		return types.ErrOverflow.Wrapf("ledger of %s in epoch %d: %d + %d overflows", addr, epoch, m.Earned, amount)
	}
	m.Earned = earned
	if err := addStats(&m.Stats, s); err != nil {
		return err
	}
	return k.Members.Set(ctx, key, m)
}

// recordStreak updates addr's invalid streak from a batch of settled stats
// (applyStreak), wherever the batch's coins were credited (a ledger or a
// summary). limit is the max_consecutive_invalid param.
func (k Keeper) recordStreak(ctx context.Context, addr sdk.AccAddress, limit uint64, s types.InferenceStats) error {
	p, err := k.participant(ctx, addr)
	if err != nil {
		return err
	}
	return k.applyStreak(ctx, addr, p, limit, s)
}

// applyStreak moves p's invalid streak by a batch of settled stats; a
// streak reaching limit (max_consecutive_invalid; 0: none) moves an ACTIVE
// participant to INVALID. p is stored only when the streak or the status
// moved: most batches leave both as they were, and a settlement must not
// rewrite every host's record.
//
// A batch carries counts, not order, so the keeper assumes the worst for the
// host: the batch's validated inferences came first (ending any previous
// streak) and its invalidated ones last (starting the new one).
func (k Keeper) applyStreak(ctx context.Context, addr sdk.AccAddress, p types.Participant, limit uint64, s types.InferenceStats) error {
	before, status := p.ConsecutiveInvalidInferences, p.Status
	if s.Validated > 0 {
		p.ConsecutiveInvalidInferences = 0
	}
	streak, ok := addU64(p.ConsecutiveInvalidInferences, s.Invalidated)
	if !ok {
		streak = ^uint64(0)
	}
	p.ConsecutiveInvalidInferences = streak
	if limit > 0 && p.ConsecutiveInvalidInferences >= limit && p.Status == types.ParticipantActive {
		if err := k.setStatus(ctx, &p, types.ParticipantInvalid); err != nil {
			return err
		}
	}
	if p.ConsecutiveInvalidInferences == before && p.Status == status {
		return nil
	}
	return k.Participants.Set(ctx, addr, p)
}

// Participant returns one participant.
func (k Keeper) participant(ctx context.Context, addr sdk.AccAddress) (types.Participant, error) {
	p, err := k.Participants.Get(ctx, addr)
	if errors.Is(err, collections.ErrNotFound) {
		return p, types.ErrParticipantNotFound.Wrapf("%s is not a registered participant", addr)
	}
	return p, err
}
