package chain

import (
	"encoding/json"

	sdkmath "cosmossdk.io/math"

	"github.com/cosmos/cosmos-sdk/codec"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/module"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"
	stakingtypes "github.com/cosmos/cosmos-sdk/x/staking/types"

	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// GenesisState is the app state of the genesis file: each module's genesis
// as raw JSON, by module name.
type GenesisState = map[string]json.RawMessage

// DefaultGenesis is every module's default genesis, set to this chain's
// denom: staking bonds ushard, gov deposits are in ushard, participants
// bond ushard collateral.
func DefaultGenesis(cdc codec.JSONCodec, basics module.BasicManager) GenesisState {
	SetAddressPrefixes()
	state := basics.DefaultGenesis(cdc)

	var staking stakingtypes.GenesisState
	cdc.MustUnmarshalJSON(state[stakingtypes.ModuleName], &staking)
	staking.Params.BondDenom = Denom
	state[stakingtypes.ModuleName] = cdc.MustMarshalJSON(&staking)

	var gov govv1.GenesisState
	cdc.MustUnmarshalJSON(state[govtypes.ModuleName], &gov)
	gov.Params.MinDeposit = sdk.NewCoins(sdk.NewCoin(Denom, sdkmath.NewInt(10_000_000)))
	gov.Params.ExpeditedMinDeposit = sdk.NewCoins(sdk.NewCoin(Denom, sdkmath.NewInt(50_000_000)))
	state[govtypes.ModuleName] = cdc.MustMarshalJSON(&gov)

	var ds devshardtypes.GenesisState
	cdc.MustUnmarshalJSON(state[devshardtypes.ModuleName], &ds)
	ds.Params.MinCollateral.Denom = Denom
	state[devshardtypes.ModuleName] = cdc.MustMarshalJSON(&ds)
	return state
}
