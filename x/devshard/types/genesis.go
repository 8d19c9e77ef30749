package types

import (
	"fmt"

	sdk "github.com/cosmos/cosmos-sdk/types"
)

// DefaultGenesis has no epochs: InitGenesis plans epoch 1.
func DefaultGenesis() *GenesisState {
	return &GenesisState{Params: DefaultParams()}
}

// Validate checks the genesis state on its own.
func (gs GenesisState) Validate() error {
	if err := gs.Params.Validate(); err != nil {
		return err
	}
	epochs := make(map[uint64]bool, len(gs.Epochs))
	for _, e := range gs.Epochs {
		if e.Id == 0 || epochs[e.Id] {
			return fmt.Errorf("%w: epoch id %d is zero or appears twice", ErrInvalidGenesis, e.Id)
		}
		if e.State == EpochStateUnspecified {
			return fmt.Errorf("%w: epoch %d has no state", ErrInvalidGenesis, e.Id)
		}
		epochs[e.Id] = true
	}
	if gs.CurrentEpoch != 0 && !epochs[gs.CurrentEpoch] {
		return fmt.Errorf("%w: current_epoch %d is not among the epochs", ErrInvalidGenesis, gs.CurrentEpoch)
	}
	participants := make(map[string]bool, len(gs.Participants))
	for _, p := range gs.Participants {
		if _, err := sdk.AccAddressFromBech32(p.Address); err != nil {
			return fmt.Errorf("%w: participant address %q: %v", ErrInvalidGenesis, p.Address, err)
		}
		if participants[p.Address] {
			return fmt.Errorf("%w: participant %s appears twice", ErrInvalidGenesis, p.Address)
		}
		if err := p.Collateral.Validate(); err != nil {
			return fmt.Errorf("%w: participant %s collateral: %v", ErrInvalidGenesis, p.Address, err)
		}
		participants[p.Address] = true
	}
	escrows := make(map[uint64]bool, len(gs.Escrows))
	for _, e := range gs.Escrows {
		if e.Id == 0 || e.Id > gs.EscrowSeq || escrows[e.Id] {
			return fmt.Errorf("%w: escrow id %d is zero, above escrow_seq %d, or appears twice", ErrInvalidGenesis, e.Id, gs.EscrowSeq)
		}
		escrows[e.Id] = true
	}
	for i, h := range gs.UpgradeHeights {
		if h <= 0 || (i > 0 && h <= gs.UpgradeHeights[i-1]) {
			return fmt.Errorf("%w: upgrade_heights[%d] is %d; heights must be positive and strictly ascending", ErrInvalidGenesis, i, h)
		}
	}
	for _, m := range gs.Members {
		if !epochs[m.EpochId] || !participants[m.Address] {
			return fmt.Errorf("%w: member %s of epoch %d names an unknown epoch or participant", ErrInvalidGenesis, m.Address, m.EpochId)
		}
	}
	return nil
}
