// Package chain is the devshard chain: a Cosmos SDK application on CometBFT
// with the standard modules (auth, bank, staking, distribution, gov, authz,
// upgrade, consensus) and the network's own (scheduler, devshard).
//
// chain/cmd is its command tree (devshard chain ...), chain/node starts an
// in-process single-validator node; chainclient signs and sends txs.
package chain

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	abci "github.com/cometbft/cometbft/abci/types"
	dbm "github.com/cosmos/cosmos-db"
	"github.com/spf13/cast"

	autocliv1 "cosmossdk.io/api/cosmos/autocli/v1"
	reflectionv1 "cosmossdk.io/api/cosmos/reflection/v1"
	"cosmossdk.io/client/v2/autocli"
	"cosmossdk.io/core/appmodule"
	"cosmossdk.io/log"
	storetypes "cosmossdk.io/store/types"
	"cosmossdk.io/x/upgrade"
	upgradekeeper "cosmossdk.io/x/upgrade/keeper"
	upgradetypes "cosmossdk.io/x/upgrade/types"

	"github.com/cosmos/cosmos-sdk/baseapp"
	"github.com/cosmos/cosmos-sdk/client"
	"github.com/cosmos/cosmos-sdk/client/grpc/cmtservice"
	nodeservice "github.com/cosmos/cosmos-sdk/client/grpc/node"
	"github.com/cosmos/cosmos-sdk/codec"
	addresscodec "github.com/cosmos/cosmos-sdk/codec/address"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	"github.com/cosmos/cosmos-sdk/runtime"
	runtimeservices "github.com/cosmos/cosmos-sdk/runtime/services"
	"github.com/cosmos/cosmos-sdk/server"
	"github.com/cosmos/cosmos-sdk/server/api"
	"github.com/cosmos/cosmos-sdk/server/config"
	servertypes "github.com/cosmos/cosmos-sdk/server/types"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/module"
	"github.com/cosmos/cosmos-sdk/x/auth"
	"github.com/cosmos/cosmos-sdk/x/auth/ante"
	authkeeper "github.com/cosmos/cosmos-sdk/x/auth/keeper"
	authsims "github.com/cosmos/cosmos-sdk/x/auth/simulation"
	authtx "github.com/cosmos/cosmos-sdk/x/auth/tx"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	"github.com/cosmos/cosmos-sdk/x/authz"
	authzkeeper "github.com/cosmos/cosmos-sdk/x/authz/keeper"
	authzmodule "github.com/cosmos/cosmos-sdk/x/authz/module"
	"github.com/cosmos/cosmos-sdk/x/bank"
	bankkeeper "github.com/cosmos/cosmos-sdk/x/bank/keeper"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	"github.com/cosmos/cosmos-sdk/x/consensus"
	consensuskeeper "github.com/cosmos/cosmos-sdk/x/consensus/keeper"
	consensustypes "github.com/cosmos/cosmos-sdk/x/consensus/types"
	distr "github.com/cosmos/cosmos-sdk/x/distribution"
	distrkeeper "github.com/cosmos/cosmos-sdk/x/distribution/keeper"
	distrtypes "github.com/cosmos/cosmos-sdk/x/distribution/types"
	"github.com/cosmos/cosmos-sdk/x/genutil"
	genutiltypes "github.com/cosmos/cosmos-sdk/x/genutil/types"
	"github.com/cosmos/cosmos-sdk/x/gov"
	govkeeper "github.com/cosmos/cosmos-sdk/x/gov/keeper"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	"github.com/cosmos/cosmos-sdk/x/staking"
	stakingkeeper "github.com/cosmos/cosmos-sdk/x/staking/keeper"
	stakingtypes "github.com/cosmos/cosmos-sdk/x/staking/types"

	"github.com/devshard/devshard/x/devshard"
	devshardkeeper "github.com/devshard/devshard/x/devshard/keeper"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
	"github.com/devshard/devshard/x/scheduler"
	schedulerkeeper "github.com/devshard/devshard/x/scheduler/keeper"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// Name is the application's name, reported over ABCI.
const Name = "devshard"

// DefaultNodeHome is where `devshard chain` keeps its config and data unless
// --home says otherwise.
var DefaultNodeHome = defaultHome()

func defaultHome() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ".devshard"
	}
	return filepath.Join(home, ".devshard")
}

// moduleAccountPerms lists the module accounts and what each may do with
// coins. The devshard module only holds collateral: it never mints or burns.
var moduleAccountPerms = map[string][]string{
	authtypes.FeeCollectorName:     nil,
	distrtypes.ModuleName:          nil,
	stakingtypes.BondedPoolName:    {authtypes.Burner, authtypes.Staking},
	stakingtypes.NotBondedPoolName: {authtypes.Burner, authtypes.Staking},
	govtypes.ModuleName:            {authtypes.Burner},
	devshardtypes.ModuleName:       nil,
}

var (
	_ servertypes.Application = (*App)(nil)
	_ runtime.AppI            = (*App)(nil)
)

// App is the devshard chain application.
type App struct {
	*baseapp.BaseApp

	legacyAmino       *codec.LegacyAmino
	appCodec          codec.Codec
	txConfig          client.TxConfig
	interfaceRegistry codectypes.InterfaceRegistry
	keys              map[string]*storetypes.KVStoreKey

	AccountKeeper   authkeeper.AccountKeeper
	BankKeeper      bankkeeper.BaseKeeper
	StakingKeeper   *stakingkeeper.Keeper
	DistrKeeper     distrkeeper.Keeper
	GovKeeper       *govkeeper.Keeper
	AuthzKeeper     authzkeeper.Keeper
	UpgradeKeeper   *upgradekeeper.Keeper
	ConsensusKeeper consensuskeeper.Keeper
	SchedulerKeeper schedulerkeeper.Keeper
	DevshardKeeper  devshardkeeper.Keeper

	ModuleManager      *module.Manager
	BasicModuleManager module.BasicManager
	configurator       module.Configurator

	invariants     invariantRegistry
	invCheckPeriod uint // --inv-check-period; 0: never
}

// New builds the app over db. appOpts carries the server's flags and config
// (home directory, invariant and upgrade options).
func New(logger log.Logger, db dbm.DB, traceStore io.Writer, loadLatest bool, appOpts servertypes.AppOptions, baseAppOptions ...func(*baseapp.BaseApp)) *App {
	enc := MakeEncoding()
	interfaceRegistry, appCodec, legacyAmino, txConfig := enc.InterfaceRegistry, enc.Codec, enc.Amino, enc.TxConfig

	bApp := baseapp.NewBaseApp(Name, logger, db, txConfig.TxDecoder(), baseAppOptions...)
	bApp.SetCommitMultiStoreTracer(traceStore)
	bApp.SetInterfaceRegistry(interfaceRegistry)
	bApp.SetTxEncoder(txConfig.TxEncoder())

	keys := storetypes.NewKVStoreKeys(
		authtypes.StoreKey, banktypes.StoreKey, stakingtypes.StoreKey, distrtypes.StoreKey,
		govtypes.StoreKey, authzkeeper.StoreKey, upgradetypes.StoreKey, consensustypes.StoreKey,
		schedulertypes.StoreKey, devshardtypes.StoreKey,
	)
	app := &App{
		BaseApp:           bApp,
		legacyAmino:       legacyAmino,
		appCodec:          appCodec,
		txConfig:          txConfig,
		interfaceRegistry: interfaceRegistry,
		keys:              keys,
	}
	govAuthority := authtypes.NewModuleAddress(govtypes.ModuleName).String()
	accCodec := addresscodec.NewBech32Codec(AccountAddressPrefix)
	app.ConsensusKeeper = consensuskeeper.NewKeeper(appCodec, runtime.NewKVStoreService(keys[consensustypes.StoreKey]), govAuthority, runtime.EventService{})
	bApp.SetParamStore(app.ConsensusKeeper.ParamsStore)

	app.AccountKeeper = authkeeper.NewAccountKeeper(appCodec, runtime.NewKVStoreService(keys[authtypes.StoreKey]),
		authtypes.ProtoBaseAccount, moduleAccountPerms, accCodec, AccountAddressPrefix, govAuthority)
	app.BankKeeper = bankkeeper.NewBaseKeeper(appCodec, runtime.NewKVStoreService(keys[banktypes.StoreKey]),
		app.AccountKeeper, blockedAddresses(), govAuthority, logger)
	app.StakingKeeper = stakingkeeper.NewKeeper(appCodec, runtime.NewKVStoreService(keys[stakingtypes.StoreKey]),
		app.AccountKeeper, app.BankKeeper, govAuthority,
		addresscodec.NewBech32Codec(ValidatorAddressPrefix), addresscodec.NewBech32Codec(ConsensusAddressPrefix))
	app.DistrKeeper = distrkeeper.NewKeeper(appCodec, runtime.NewKVStoreService(keys[distrtypes.StoreKey]),
		app.AccountKeeper, app.BankKeeper, app.StakingKeeper, authtypes.FeeCollectorName, govAuthority)
	app.StakingKeeper.SetHooks(stakingtypes.NewMultiStakingHooks(app.DistrKeeper.Hooks()))
	app.AuthzKeeper = authzkeeper.NewKeeper(runtime.NewKVStoreService(keys[authzkeeper.StoreKey]), appCodec,
		app.MsgServiceRouter(), app.AccountKeeper)

	homePath := cast.ToString(appOpts.Get("home"))
	skipUpgradeHeights := map[int64]bool{}
	for _, h := range cast.ToIntSlice(appOpts.Get(server.FlagUnsafeSkipUpgrades)) {
		skipUpgradeHeights[int64(h)] = true
	}
	app.UpgradeKeeper = upgradekeeper.NewKeeper(skipUpgradeHeights, runtime.NewKVStoreService(keys[upgradetypes.StoreKey]),
		appCodec, homePath, app.BaseApp, govAuthority)

	app.GovKeeper = govkeeper.NewKeeper(appCodec, runtime.NewKVStoreService(keys[govtypes.StoreKey]),
		app.AccountKeeper, app.BankKeeper, app.StakingKeeper, app.DistrKeeper, app.MsgServiceRouter(),
		govtypes.DefaultConfig(), govAuthority)

	app.SchedulerKeeper = schedulerkeeper.NewKeeper(appCodec, runtime.NewKVStoreService(keys[schedulertypes.StoreKey]), govAuthority)
	app.DevshardKeeper = devshardkeeper.NewKeeper(appCodec, runtime.NewKVStoreService(keys[devshardtypes.StoreKey]),
		accCodec, govAuthority, app.BankKeeper, app.AuthzKeeper, app.SchedulerKeeper, app.DistrKeeper, app.UpgradeKeeper)
	if err := app.SchedulerKeeper.Register(app.DevshardKeeper.TaskDefinitions()...); err != nil {
		panic(err)
	}
	// Every module has registered its task types: fix their run order now,
	// so a wiring mistake (cycle, unknown dependency) stops the binary at
	// start instead of at the first due task.
	if err := app.SchedulerKeeper.Seal(); err != nil {
		panic(err)
	}

	app.ModuleManager = module.NewManager(
		genutil.NewAppModule(app.AccountKeeper, app.StakingKeeper, app, txConfig),
		auth.NewAppModule(appCodec, app.AccountKeeper, authsims.RandomGenesisAccounts, nil),
		bank.NewAppModule(appCodec, app.BankKeeper, app.AccountKeeper, nil),
		staking.NewAppModule(appCodec, app.StakingKeeper, app.AccountKeeper, app.BankKeeper, nil),
		distr.NewAppModule(appCodec, app.DistrKeeper, app.AccountKeeper, app.BankKeeper, app.StakingKeeper, nil),
		gov.NewAppModule(appCodec, app.GovKeeper, app.AccountKeeper, app.BankKeeper, nil),
		authzmodule.NewAppModule(appCodec, app.AuthzKeeper, app.AccountKeeper, app.BankKeeper, interfaceRegistry),
		upgrade.NewAppModule(app.UpgradeKeeper, accCodec),
		consensus.NewAppModule(appCodec, app.ConsensusKeeper),
		scheduler.NewAppModule(app.SchedulerKeeper),
		devshard.NewAppModule(app.DevshardKeeper),
	)
	app.BasicModuleManager = module.NewBasicManagerFromManager(app.ModuleManager, map[string]module.AppModuleBasic{
		genutiltypes.ModuleName: genutil.NewAppModuleBasic(genutiltypes.DefaultMessageValidator),
		govtypes.ModuleName:     gov.NewAppModuleBasic(nil),
	})

	app.ModuleManager.SetOrderPreBlockers(upgradetypes.ModuleName, authtypes.ModuleName)
	app.ModuleManager.SetOrderBeginBlockers(distrtypes.ModuleName, stakingtypes.ModuleName, authz.ModuleName)
	// The scheduler runs last, after gov, so a task governance puts back on
	// the schedule runs in the same block.
	app.ModuleManager.SetOrderEndBlockers(govtypes.ModuleName, stakingtypes.ModuleName, devshardtypes.ModuleName, schedulertypes.ModuleName)
	// genutil delivers the gentxs, so staking and bank must be set up first;
	// the devshard module schedules epoch 1 through the scheduler and checks
	// bonded collateral against bank, so it comes after both.
	genesisOrder := []string{
		authtypes.ModuleName, banktypes.ModuleName, distrtypes.ModuleName, stakingtypes.ModuleName,
		govtypes.ModuleName, genutiltypes.ModuleName, authz.ModuleName, upgradetypes.ModuleName,
		consensustypes.ModuleName, schedulertypes.ModuleName, devshardtypes.ModuleName,
	}
	app.ModuleManager.SetOrderInitGenesis(genesisOrder...)
	app.ModuleManager.SetOrderExportGenesis(genesisOrder...)

	app.configurator = module.NewConfigurator(appCodec, app.MsgServiceRouter(), app.GRPCQueryRouter())
	if err := app.ModuleManager.RegisterServices(app.configurator); err != nil {
		panic(err)
	}
	autocliv1.RegisterQueryServer(app.GRPCQueryRouter(), runtimeservices.NewAutoCLIQueryService(app.ModuleManager.Modules))
	reflection, err := runtimeservices.NewReflectionService()
	if err != nil {
		panic(err)
	}
	reflectionv1.RegisterReflectionServiceServer(app.GRPCQueryRouter(), reflection)

	app.registerInvariants()
	app.invCheckPeriod = cast.ToUint(appOpts.Get(server.FlagInvCheckPeriod))
	app.registerUpgrades()
	app.MountKVStores(keys)
	app.SetInitChainer(app.InitChainer)
	app.SetPreBlocker(app.PreBlocker)
	app.SetBeginBlocker(app.BeginBlocker)
	app.SetEndBlocker(app.EndBlocker)
	sdkAnte, err := ante.NewAnteHandler(ante.HandlerOptions{
		AccountKeeper:   app.AccountKeeper,
		BankKeeper:      app.BankKeeper,
		SignModeHandler: txConfig.SignModeHandler(),
		SigGasConsumer:  ante.DefaultSigVerificationGasConsumer,
	})
	if err != nil {
		panic(err)
	}
	// The SDK's checks first (fees, the tx's signatures, skipped in a
	// block for a tx this node verified in its mempool), then the
	// settlements' own in the mempool.
	settlements := devshardkeeper.NewSettlementAnteDecorator(app.DevshardKeeper)
	verified := newTxSigCache()
	app.SetAnteHandler(func(ctx sdk.Context, tx sdk.Tx, simulate bool) (sdk.Context, error) {
		sigverify := ctx.IsSigverifyTx()
		ctx, err := sdkAnte(verified.skipVerified(ctx, tx, simulate), tx, simulate)
		if err != nil {
			return ctx, err
		}
		ctx = ctx.WithIsSigverifyTx(sigverify)
		verified.remember(ctx, tx, simulate)
		return settlements.AnteHandle(ctx, tx, simulate, noMoreAnte)
	})

	if loadLatest {
		if err := app.LoadLatestVersion(); err != nil {
			panic(fmt.Errorf("loading the latest state: %w", err))
		}
	}
	return app
}

// noMoreAnte ends the ante chain.
func noMoreAnte(ctx sdk.Context, _ sdk.Tx, _ bool) (sdk.Context, error) { return ctx, nil }

// blockedAddresses are the module accounts that plain sends may not credit:
// coins sent there by mistake would be stuck or would corrupt a module's
// accounting (the devshard account must hold exactly the bonded collateral).
func blockedAddresses() map[string]bool {
	blocked := make(map[string]bool, len(moduleAccountPerms))
	for name := range moduleAccountPerms { // deterministic: fills a set; order cannot matter
		blocked[authtypes.NewModuleAddress(name).String()] = true
	}
	// As in the SDK's example app, gov's account stays open: proposals may
	// send to it.
	delete(blocked, authtypes.NewModuleAddress(govtypes.ModuleName).String())
	return blocked
}

// InitChainer loads the genesis state.
func (app *App) InitChainer(ctx sdk.Context, req *abci.RequestInitChain) (*abci.ResponseInitChain, error) {
	var state GenesisState
	if err := json.Unmarshal(req.AppStateBytes, &state); err != nil {
		return nil, fmt.Errorf("genesis app_state is not valid JSON: %w", err)
	}
	if err := app.UpgradeKeeper.SetModuleVersionMap(ctx, app.ModuleManager.GetVersionMap()); err != nil {
		return nil, err
	}
	return app.ModuleManager.InitGenesis(ctx, app.appCodec, state)
}

// PreBlocker runs before BeginBlock (upgrades, unordered-tx cleanup).
func (app *App) PreBlocker(ctx sdk.Context, _ *abci.RequestFinalizeBlock) (*sdk.ResponsePreBlock, error) {
	return app.ModuleManager.PreBlock(ctx)
}

// BeginBlocker runs the modules' begin blockers.
func (app *App) BeginBlocker(ctx sdk.Context) (sdk.BeginBlock, error) {
	return app.ModuleManager.BeginBlock(ctx)
}

// EndBlocker runs the modules' end blockers, the scheduler last, then, every
// --inv-check-period blocks, the registered invariants. A broken invariant
// is an error: this node stops before committing the block.
func (app *App) EndBlocker(ctx sdk.Context) (sdk.EndBlock, error) {
	res, err := app.ModuleManager.EndBlock(ctx)
	if err != nil {
		return res, err
	}
	period := int64(app.invCheckPeriod)
	if period == 0 || ctx.BlockHeight()%period != 0 {
		return res, nil
	}
	if err := app.AssertInvariants(ctx); err != nil {
		ctx.Logger().Error("invariant broken: stopping this node", "height", ctx.BlockHeight(), "err", err)
		return res, fmt.Errorf("%w; this node stops before committing block %d (--%s %d): "+
			"`devshard chain query devshard conservation` shows both sides of the books, "+
			"and --%s 0 lets the node follow the chain again",
			err, ctx.BlockHeight(), server.FlagInvCheckPeriod, period, server.FlagInvCheckPeriod)
	}
	return res, nil
}

// InvariantRoute is a registered invariant, named module/route as x/crisis
// named them (devshard/conservation).
type InvariantRoute struct {
	Module, Route string
	Check         sdk.Invariant
}

// FullRoute is module/route.
func (r InvariantRoute) FullRoute() string { return r.Module + "/" + r.Route }

// invariantRegistry holds the modules' invariants. The app keeps them
// itself: in SDK v0.53 Manager.RegisterInvariants is a no-op and x/crisis,
// which held them, is deprecated.
type invariantRegistry []InvariantRoute

// RegisterRoute implements sdk.InvariantRegistry.
func (r *invariantRegistry) RegisterRoute(moduleName, route string, check sdk.Invariant) {
	*r = append(*r, InvariantRoute{Module: moduleName, Route: route, Check: check})
}

// registerInvariants collects the invariants of every module that has any,
// in module name order.
func (app *App) registerInvariants() {
	for _, name := range slices.Sorted(maps.Keys(app.ModuleManager.Modules)) {
		if m, ok := app.ModuleManager.Modules[name].(module.HasInvariants); ok {
			m.RegisterInvariants(&app.invariants)
		}
	}
}

// Invariants are the registered invariants, in the order they are checked.
func (app *App) Invariants() []InvariantRoute { return slices.Clone(app.invariants) }

// BrokenInvariantError is a registered invariant that does not hold.
type BrokenInvariantError struct {
	Route  string // module/route
	Height int64
	Report string // the invariant's own account of what it found
}

func (e *BrokenInvariantError) Error() string {
	return fmt.Sprintf("invariant %s broken at height %d: %s", e.Route, e.Height, e.Report)
}

// AssertInvariants checks every registered invariant against ctx's state and
// returns a *BrokenInvariantError for each that does not hold (joined), or
// nil. Each check runs in a branch that is thrown away, with its own gas
// meter, so checking changes neither the state nor the block's gas.
func (app *App) AssertInvariants(ctx sdk.Context) error {
	var broken []error
	for _, r := range app.invariants {
		branch, _ := ctx.CacheContext()
		report, bad := r.Check(branch.WithGasMeter(storetypes.NewInfiniteGasMeter()))
		if bad {
			broken = append(broken, &BrokenInvariantError{
				Route: r.FullRoute(), Height: ctx.BlockHeight(),
				Report: strings.ReplaceAll(strings.TrimSpace(report), "\n", ": "),
			})
		}
	}
	return errors.Join(broken...)
}

// LoadHeight loads the state at height, for export.
func (app *App) LoadHeight(height int64) error { return app.LoadVersion(height) }

// Name is the app's name.
func (app *App) Name() string { return app.BaseApp.Name() }

// LegacyAmino is the amino codec, for ledger signing and legacy JSON.
func (app *App) LegacyAmino() *codec.LegacyAmino { return app.legacyAmino }

// AppCodec is the app's protobuf codec.
func (app *App) AppCodec() codec.Codec { return app.appCodec }

// InterfaceRegistry is the app's interface registry.
func (app *App) InterfaceRegistry() codectypes.InterfaceRegistry { return app.interfaceRegistry }

// TxConfig is the app's tx encoding and signing configuration.
func (app *App) TxConfig() client.TxConfig { return app.txConfig }

// DefaultGenesis is the genesis state of every module, with this chain's
// denom and defaults.
func (app *App) DefaultGenesis() map[string]json.RawMessage {
	return DefaultGenesis(app.appCodec, app.BasicModuleManager)
}

// SimulationManager is not used: the chain has no simulation tests.
func (app *App) SimulationManager() *module.SimulationManager { return nil }

// RegisterAPIRoutes serves the REST routes of the txs, CometBFT, the node
// and every module on the API server.
func (app *App) RegisterAPIRoutes(apiSvr *api.Server, _ config.APIConfig) {
	clientCtx := apiSvr.ClientCtx
	authtx.RegisterGRPCGatewayRoutes(clientCtx, apiSvr.GRPCGatewayRouter)
	cmtservice.RegisterGRPCGatewayRoutes(clientCtx, apiSvr.GRPCGatewayRouter)
	nodeservice.RegisterGRPCGatewayRoutes(clientCtx, apiSvr.GRPCGatewayRouter)
	app.BasicModuleManager.RegisterGRPCGatewayRoutes(clientCtx, apiSvr.GRPCGatewayRouter)
}

// RegisterTxService serves tx simulation and broadcast over gRPC.
func (app *App) RegisterTxService(clientCtx client.Context) {
	authtx.RegisterTxService(app.GRPCQueryRouter(), clientCtx, app.Simulate, app.interfaceRegistry)
}

// RegisterTendermintService serves CometBFT queries over gRPC.
func (app *App) RegisterTendermintService(clientCtx client.Context) {
	cmtservice.RegisterTendermintService(clientCtx, app.GRPCQueryRouter(), app.interfaceRegistry, server.NewCometABCIWrapper(app).Query)
}

// RegisterNodeService serves the node's config and status over gRPC.
func (app *App) RegisterNodeService(clientCtx client.Context, cfg config.Config) {
	nodeservice.RegisterNodeService(clientCtx, app.GRPCQueryRouter(), cfg)
}

// AutoCLIOptions are what the CLI needs to generate every module's query
// and tx commands.
func (app *App) AutoCLIOptions() autocli.AppOptions {
	modules := make(map[string]appmodule.AppModule, len(app.ModuleManager.Modules))
	for name, m := range app.ModuleManager.Modules { // deterministic: fills a map for the CLI; no state
		if am, ok := m.(appmodule.AppModule); ok {
			modules[name] = am
		}
	}
	return autocli.AppOptions{
		Modules:               modules,
		ModuleOptions:         runtimeservices.ExtractAutoCLIOptions(app.ModuleManager.Modules),
		AddressCodec:          addresscodec.NewBech32Codec(AccountAddressPrefix),
		ValidatorAddressCodec: addresscodec.NewBech32Codec(ValidatorAddressPrefix),
		ConsensusAddressCodec: addresscodec.NewBech32Codec(ConsensusAddressPrefix),
	}
}
