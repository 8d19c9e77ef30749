// Package devshard is the network's own Cosmos SDK module: participants bond
// collateral and serve in epochs, and each epoch moves through an explicit
// state machine (PLANNED, ACTIVE, SETTLING, ACCOUNTING, CLAIMABLE, CLOSED or
// CANCELLED) driven by scheduler tasks. Escrows and settlement build on it.
package devshard

import (
	"context"
	"encoding/json"
	"fmt"

	gwruntime "github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/grpc"

	"cosmossdk.io/core/appmodule"

	"github.com/cosmos/cosmos-sdk/client"
	"github.com/cosmos/cosmos-sdk/codec"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/module"

	"github.com/devshard/devshard/x/devshard/keeper"
	"github.com/devshard/devshard/x/devshard/types"
)

// ConsensusVersion is the state layout version, for migrations.
const ConsensusVersion = 1

var (
	_ module.AppModuleBasic      = AppModule{}
	_ module.HasGenesis          = AppModule{}
	_ module.HasConsensusVersion = AppModule{}
	_ appmodule.AppModule        = AppModule{}
	_ appmodule.HasServices      = AppModule{}
	_ appmodule.HasEndBlocker    = AppModule{}
	_ module.HasInvariants       = AppModule{}
)

// AppModule is the devshard module. The scheduler runs its epoch
// transitions; its own end blocker refunds expired escrows in bounded
// batches.
type AppModule struct {
	keeper keeper.Keeper
}

// NewAppModule returns the module over k.
func NewAppModule(k keeper.Keeper) AppModule { return AppModule{keeper: k} }

func (AppModule) IsAppModule()                                  {}
func (AppModule) IsOnePerModuleType()                           {}
func (AppModule) Name() string                                  { return types.ModuleName }
func (AppModule) ConsensusVersion() uint64                      { return ConsensusVersion }
func (AppModule) RegisterLegacyAminoCodec(c *codec.LegacyAmino) { types.RegisterLegacyAminoCodec(c) }
func (AppModule) RegisterInterfaces(r codectypes.InterfaceRegistry) {
	types.RegisterInterfaces(r)
}

// RegisterGRPCGatewayRoutes serves the queries over REST on the API server.
func (AppModule) RegisterGRPCGatewayRoutes(clientCtx client.Context, mux *gwruntime.ServeMux) {
	if err := types.RegisterQueryHandlerClient(context.Background(), mux, types.NewQueryClient(clientCtx)); err != nil {
		panic(err)
	}
}

// RegisterServices registers the Msg and Query services.
func (am AppModule) RegisterServices(r grpc.ServiceRegistrar) error {
	types.RegisterMsgServer(r, keeper.NewMsgServer(am.keeper))
	types.RegisterQueryServer(r, keeper.NewQueryServer(am.keeper))
	return nil
}

func (AppModule) DefaultGenesis(cdc codec.JSONCodec) json.RawMessage {
	return cdc.MustMarshalJSON(types.DefaultGenesis())
}

func (AppModule) ValidateGenesis(cdc codec.JSONCodec, _ client.TxEncodingConfig, bz json.RawMessage) error {
	var gs types.GenesisState
	if err := cdc.UnmarshalJSON(bz, &gs); err != nil {
		return fmt.Errorf("%s genesis is not valid JSON for GenesisState: %w", types.ModuleName, err)
	}
	return gs.Validate()
}

func (am AppModule) InitGenesis(ctx sdk.Context, cdc codec.JSONCodec, bz json.RawMessage) {
	var gs types.GenesisState
	cdc.MustUnmarshalJSON(bz, &gs)
	if err := am.keeper.InitGenesis(ctx, gs); err != nil {
		panic(fmt.Errorf("%s genesis: %w", types.ModuleName, err))
	}
}

func (am AppModule) ExportGenesis(ctx sdk.Context, cdc codec.JSONCodec) json.RawMessage {
	gs, err := am.keeper.ExportGenesis(ctx)
	if err != nil {
		panic(fmt.Errorf("%s genesis export: %w", types.ModuleName, err))
	}
	return cdc.MustMarshalJSON(gs)
}

// EndBlock records an upgrade applied in this block (upgrade protection),
// then refunds escrows whose expiry epoch has begun, at most expiry_batch
// per block. It runs before the scheduler's epoch tasks.
func (am AppModule) EndBlock(ctx context.Context) error {
	if err := am.keeper.RecordUpgrade(ctx); err != nil {
		return err
	}
	return am.keeper.ExpireEscrows(sdk.UnwrapSDKContext(ctx))
}

// RegisterInvariants registers the conservation invariant
// (devshard/conservation): the module account holds exactly open escrows +
// ledgers + unclaimed rewards + bonded collateral. The app collects it and
// checks it every --inv-check-period blocks (chain.App.AssertInvariants).
func (am AppModule) RegisterInvariants(ir sdk.InvariantRegistry) {
	keeper.RegisterInvariants(ir, am.keeper)
}
