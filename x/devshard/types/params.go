package types

import (
	"fmt"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
)

// DefaultCollateralDenom is the chain's base denom.
const DefaultCollateralDenom = "ushard"

// Limits that keep every height an epoch computes far from int64 overflow.
const (
	MaxEpochLength = 1_000_000_000
	MaxPhaseEpochs = 10_000
)

// DefaultParams: 100-block epochs; an epoch settles while the next is active,
// is accounted during the one after, and stays claimable for two more.
func DefaultParams() Params {
	return Params{
		EpochLength:           100,
		SettlingEpochs:        1,
		AccountingEpochs:      1,
		ClaimableEpochs:       2,
		MinCollateral:         sdk.NewCoin(DefaultCollateralDenom, sdkmath.NewInt(1_000_000)),
		MaxConsecutiveInvalid: 10,
	}
}

// Validate checks the parameters are usable.
func (p Params) Validate() error {
	switch {
	case p.EpochLength < 1 || p.EpochLength > MaxEpochLength:
		return fmt.Errorf("%w: epoch_length is %d blocks; it must be between 1 and %d", ErrInvalidParams, p.EpochLength, MaxEpochLength)
	case p.SettlingEpochs < 1:
		return fmt.Errorf("%w: settling_epochs is 0; it must be at least 1 so epoch N settles while N+1 is active", ErrInvalidParams)
	case p.ClaimableEpochs < 1:
		return fmt.Errorf("%w: claimable_epochs is 0; it must be at least 1 so rewards can be claimed", ErrInvalidParams)
	case p.SettlingEpochs > MaxPhaseEpochs || p.AccountingEpochs > MaxPhaseEpochs || p.ClaimableEpochs > MaxPhaseEpochs:
		return fmt.Errorf("%w: a phase may last at most %d epochs", ErrInvalidParams, MaxPhaseEpochs)
	}
	if err := p.MinCollateral.Validate(); err != nil {
		return fmt.Errorf("%w: min_collateral: %v", ErrInvalidParams, err)
	}
	return nil
}
