package keeper

import (
	"context"
	"fmt"

	"cosmossdk.io/collections"

	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"

	"github.com/devshard/devshard/x/devshard/types"
)

// InitGenesis loads the state. With no epochs it plans epoch 1 to begin at
// the end of the first block. Bonded collateral must already sit in the
// module account (bank's genesis runs first), or the chain would owe coins it
// does not hold.
func (k Keeper) InitGenesis(ctx sdk.Context, gs types.GenesisState) error {
	if err := gs.Validate(); err != nil {
		return err
	}
	if err := k.Params.Set(ctx, gs.Params); err != nil {
		return err
	}
	if gs.CurrentEpoch != 0 {
		if err := k.CurrentEpoch.Set(ctx, gs.CurrentEpoch); err != nil {
			return err
		}
	}
	for _, e := range gs.Epochs {
		if err := k.Epochs.Set(ctx, e.Id, e); err != nil {
			return err
		}
	}
	bonded := sdk.NewCoins()
	for _, p := range gs.Participants {
		addr, err := k.addressCodec.StringToBytes(p.Address)
		if err != nil {
			return err
		}
		if err := k.Participants.Set(ctx, addr, p); err != nil {
			return err
		}
		bonded = bonded.Add(p.Collateral)
		if p.Status == types.ParticipantInactive && p.Collateral.IsPositive() {
			if err := k.Unbonding.Set(ctx, collections.Join(p.UnbondAfterEpoch, sdk.AccAddress(addr))); err != nil {
				return err
			}
		}
	}
	for _, m := range gs.Members {
		addr, err := k.addressCodec.StringToBytes(m.Address)
		if err != nil {
			return err
		}
		if err := k.Members.Set(ctx, collections.Join(m.EpochId, sdk.AccAddress(addr)), m); err != nil {
			return err
		}
	}
	owed, err := k.initEscrowGenesis(ctx, gs)
	if err != nil {
		return err
	}
	module := authtypes.NewModuleAddress(types.ModuleName)
	for _, c := range bonded.Add(owed...) {
		if held := k.bank.GetBalance(ctx, module, c.Denom); held.Amount.LT(c.Amount) {
			return fmt.Errorf("%w: participants bond and escrows, ledgers and rewards owe %s but the %s module account holds only %s; fund it in the bank genesis",
				types.ErrInvalidGenesis, c, types.ModuleName, held)
		}
	}
	for _, h := range gs.UpgradeHeights {
		if err := k.UpgradeHeights.Set(ctx, h); err != nil {
			return err
		}
	}
	if len(gs.Epochs) == 0 {
		return k.planEpoch(ctx, 1, max(ctx.BlockHeight(), 1))
	}
	return nil
}

// ExportGenesis dumps the state.
func (k Keeper) ExportGenesis(ctx context.Context) (*types.GenesisState, error) {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return nil, err
	}
	current, err := k.currentEpochID(ctx)
	if err != nil {
		return nil, err
	}
	gs := &types.GenesisState{Params: params, CurrentEpoch: current}
	if err := k.Epochs.Walk(ctx, nil, func(_ uint64, e types.Epoch) (bool, error) {
		gs.Epochs = append(gs.Epochs, e)
		return false, nil
	}); err != nil {
		return nil, err
	}
	if err := k.Participants.Walk(ctx, nil, func(_ sdk.AccAddress, p types.Participant) (bool, error) {
		gs.Participants = append(gs.Participants, p)
		return false, nil
	}); err != nil {
		return nil, err
	}
	if err := k.Members.Walk(ctx, nil, func(_ collections.Pair[uint64, sdk.AccAddress], m types.EpochMember) (bool, error) {
		gs.Members = append(gs.Members, m)
		return false, nil
	}); err != nil {
		return nil, err
	}
	if err := k.Escrows.Walk(ctx, nil, func(_ uint64, e types.Escrow) (bool, error) {
		gs.Escrows = append(gs.Escrows, e)
		return false, nil
	}); err != nil {
		return nil, err
	}
	if gs.EscrowSeq, err = k.EscrowSeq.Peek(ctx); err != nil {
		return nil, err
	}
	if err := k.EscrowCount.Walk(ctx, nil, func(epoch, count uint64) (bool, error) {
		gs.EscrowCounts = append(gs.EscrowCounts, types.EpochEscrowCount{EpochId: epoch, Count: count})
		return false, nil
	}); err != nil {
		return nil, err
	}
	if err := k.Summaries.Walk(ctx, nil, func(_ collections.Pair[uint64, sdk.AccAddress], s types.EpochPerformanceSummary) (bool, error) {
		gs.Summaries = append(gs.Summaries, s)
		return false, nil
	}); err != nil {
		return nil, err
	}
	if err := k.UpgradeHeights.Walk(ctx, nil, func(h int64) (bool, error) {
		gs.UpgradeHeights = append(gs.UpgradeHeights, h)
		return false, nil
	}); err != nil {
		return nil, err
	}
	return gs, nil
}

// initEscrowGenesis loads escrows, counts and summaries, and returns what
// they and the ledgers owe.
func (k Keeper) initEscrowGenesis(ctx sdk.Context, gs types.GenesisState) (sdk.Coins, error) {
	owed := sdk.NewCoins()
	for _, m := range gs.Members {
		owed = owed.Add(coinsOf(gs.Params.MinCollateral.Denom, m.Earned)...)
	}
	for _, e := range gs.Escrows {
		if err := k.Escrows.Set(ctx, e.Id, e); err != nil {
			return nil, err
		}
		switch {
		case e.Status == types.EscrowOpen && e.Pending != nil:
			// Its window's task comes with the scheduler's genesis.
			if err := k.Pending.Set(ctx, e.Id); err != nil {
				return nil, err
			}
		case e.Status == types.EscrowOpen:
			if err := k.EscrowExpiry.Set(ctx, collections.Join(e.ExpiryEpoch, e.Id)); err != nil {
				return nil, err
			}
		}
		if e.Status == types.EscrowOpen {
			owed = owed.Add(e.Coins(e.Snapshot.Amount)...)
		}
	}
	if err := k.EscrowSeq.Set(ctx, gs.EscrowSeq); err != nil {
		return nil, err
	}
	for _, c := range gs.EscrowCounts {
		if err := k.EscrowCount.Set(ctx, c.EpochId, c.Count); err != nil {
			return nil, err
		}
	}
	for _, s := range gs.Summaries {
		addr, err := k.addressCodec.StringToBytes(s.Address)
		if err != nil {
			return nil, err
		}
		if err := k.Summaries.Set(ctx, collections.Join(s.EpochId, sdk.AccAddress(addr)), s); err != nil {
			return nil, err
		}
		if !s.Claimed && !s.Swept {
			owed = owed.Add(coinsOf(gs.Params.MinCollateral.Denom, s.Rewarded)...)
		}
	}
	return owed, nil
}
