package types

import (
	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
)

// Coins is amount of the escrow's denom; zero is no coins.
func (e Escrow) Coins(amount uint64) sdk.Coins {
	return sdk.NewCoins(sdk.NewCoin(e.Denom, sdkmath.NewIntFromUint64(amount)))
}
