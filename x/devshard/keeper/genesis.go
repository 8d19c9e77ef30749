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
	module := authtypes.NewModuleAddress(types.ModuleName)
	for _, c := range bonded {
		if held := k.bank.GetBalance(ctx, module, c.Denom); held.Amount.LT(c.Amount) {
			return fmt.Errorf("%w: participants bond %s but the %s module account holds only %s; fund it in the bank genesis",
				types.ErrInvalidGenesis, c, types.ModuleName, held)
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
	return gs, nil
}
