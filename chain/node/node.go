// Package node starts a single-validator devshard chain inside the calling
// process: a real CometBFT node on loopback ports, with gRPC and REST
// servers, a fresh genesis and funded accounts whose keys the caller holds.
// Tests and `devshard devnet` use it.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	cmtcfg "github.com/cometbft/cometbft/config"
	cmtnode "github.com/cometbft/cometbft/node"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/privval"
	"github.com/cometbft/cometbft/proxy"
	"github.com/cometbft/cometbft/rpc/client/local"
	cmttypes "github.com/cometbft/cometbft/types"
	dbm "github.com/cosmos/cosmos-db"
	"github.com/cosmos/go-bip39"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"cosmossdk.io/log"
	sdkmath "cosmossdk.io/math"

	"github.com/cosmos/cosmos-sdk/baseapp"
	"github.com/cosmos/cosmos-sdk/client"
	"github.com/cosmos/cosmos-sdk/codec"
	cryptocodec "github.com/cosmos/cosmos-sdk/crypto/codec"
	"github.com/cosmos/cosmos-sdk/crypto/hd"
	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	"github.com/cosmos/cosmos-sdk/server"
	"github.com/cosmos/cosmos-sdk/server/api"
	srvconfig "github.com/cosmos/cosmos-sdk/server/config"
	servergrpc "github.com/cosmos/cosmos-sdk/server/grpc"
	servercmtlog "github.com/cosmos/cosmos-sdk/server/log"
	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	genutiltypes "github.com/cosmos/cosmos-sdk/x/genutil/types"
	stakingtypes "github.com/cosmos/cosmos-sdk/x/staking/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chainclient"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Config describes the chain to start. The zero value is a usable local
// chain: one-second blocks, the default parameters, no extra accounts.
type Config struct {
	// ChainID defaults to "devshard-local".
	ChainID string
	// Home holds the node's config and data. Empty means a temporary
	// directory, removed by Close.
	Home string
	// Accounts are funded at genesis. An account without a key gets a fresh
	// one; Start returns them all, keys included, in Node.Accounts.
	Accounts []Account
	// BlockTime is the target interval between blocks (default 1s).
	BlockTime time.Duration
	// Params replaces the devshard module's parameters (epoch length and
	// phases, collateral), for short epochs in tests.
	Params *devshardtypes.Params
	// BlockMaxGas, if positive, replaces the block gas limit of the
	// default consensus params (chain.BlockMaxGas), for a test that needs
	// a block too small for two txs.
	BlockMaxGas int64
	// Genesis, if set, may change any module's genesis before the chain
	// starts.
	Genesis func(cdc codec.JSONCodec, state chain.GenesisState) error
	// Logger receives the node's logs (default: none).
	Logger log.Logger
	// Resume continues the chain already in Home if it has a genesis file:
	// nothing is written, and Accounts (whose Key or Mnemonic must be set)
	// only name the keys; Validator is left empty. Without a genesis in
	// Home a new chain is made as usual.
	Resume bool
}

// Account is a genesis account and its key.
type Account struct {
	Name  string
	Coins sdk.Coins
	// Key signs for the account. If nil, Start derives it from Mnemonic,
	// generating a mnemonic if that is empty too, so every account can be
	// imported with `keys add --recover`.
	Key      *secp256k1.PrivKey
	Mnemonic string
	Address  sdk.AccAddress // set by Start
}

// NewMnemonic returns a fresh 24-word BIP-39 mnemonic.
func NewMnemonic() (string, error) {
	entropy, err := bip39.NewEntropy(256)
	if err != nil {
		return "", err
	}
	return bip39.NewMnemonic(entropy)
}

// derive fills in Key from Mnemonic (the standard Cosmos path m/44'/118'/0'/0/0).
func (a *Account) derive() error {
	if a.Key != nil {
		return nil
	}
	if a.Mnemonic == "" {
		var err error
		if a.Mnemonic, err = NewMnemonic(); err != nil {
			return err
		}
	}
	raw, err := hd.Secp256k1.Derive()(a.Mnemonic, "", hd.CreateHDPath(sdk.CoinType, 0, 0).String())
	if err != nil {
		return fmt.Errorf("account %q: %w", a.Name, err)
	}
	a.Key = &secp256k1.PrivKey{Key: raw}
	return nil
}

// ValidatorStake is what the validator bonds at genesis; ValidatorFunds is
// its account's balance before bonding.
var (
	ValidatorStake = sdkmath.NewInt(100_000_000)
	ValidatorFunds = sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(1_000_000_000_000)))
)

// Node is a running single-validator chain.
type Node struct {
	ChainID string
	Home    string
	// RPCAddress is CometBFT's RPC (tcp://127.0.0.1:port).
	RPCAddress string
	// GRPCAddress is the app's gRPC server (127.0.0.1:port).
	GRPCAddress string
	// APIAddress is the REST server (http://127.0.0.1:port).
	APIAddress string
	// Validator is the validator operator's funded account.
	Validator Account
	// Accounts are Config.Accounts, with keys and addresses filled in.
	Accounts []Account
	Encoding chain.Encoding
	App      *chain.App

	comet      *cmtnode.Node
	servers    *errgroup.Group
	stop       context.CancelFunc
	conn       *grpc.ClientConn
	removeHome bool
}

// Start builds a genesis, starts the node and its gRPC and REST servers on
// free loopback ports, and returns once the first block is committed. ctx
// bounds the start only; Close stops the node.
func Start(ctx context.Context, cfg Config) (n *Node, err error) {
	chain.SetAddressPrefixes()
	if cfg.ChainID == "" {
		cfg.ChainID = "devshard-local"
	}
	if cfg.BlockTime == 0 {
		cfg.BlockTime = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = log.NewNopLogger()
	}
	n = &Node{ChainID: cfg.ChainID, Home: cfg.Home, Encoding: chain.MakeEncoding()}
	if n.Home == "" {
		if n.Home, err = os.MkdirTemp("", "devshard-node-"); err != nil {
			return nil, err
		}
		n.removeHome = true
	}
	built := n // an error return sets n to nil before this runs
	defer func() {
		if err != nil {
			built.Close()
			n = nil
		}
	}()

	ports, err := FreePorts(4)
	if err != nil {
		return nil, err
	}
	cometCfg := cometConfig(n.Home, cfg.BlockTime, ports[0], ports[1])
	appCfg := chain.DefaultAppConfig()
	appCfg.GRPC.Address = fmt.Sprintf("127.0.0.1:%d", ports[2])
	appCfg.API.Address = fmt.Sprintf("tcp://127.0.0.1:%d", ports[3])
	n.RPCAddress = cometCfg.RPC.ListenAddress
	n.GRPCAddress = appCfg.GRPC.Address
	n.APIAddress = fmt.Sprintf("http://127.0.0.1:%d", ports[3])
	if err := writeConfigs(cometCfg, appCfg); err != nil {
		return nil, err
	}

	pv := privval.LoadOrGenFilePV(cometCfg.PrivValidatorKeyFile(), cometCfg.PrivValidatorStateFile())
	nodeKey, err := p2p.LoadOrGenNodeKey(cometCfg.NodeKeyFile())
	if err != nil {
		return nil, err
	}
	if _, statErr := os.Stat(cometCfg.GenesisFile()); cfg.Resume && statErr == nil {
		if err := n.resumeAccounts(cfg); err != nil {
			return nil, err
		}
	} else if err := n.writeGenesis(cfg, cometCfg, pv); err != nil {
		return nil, fmt.Errorf("writing genesis: %w", err)
	}

	db, err := dbm.NewDB("application", dbm.GoLevelDBBackend, filepath.Join(n.Home, "data"))
	if err != nil {
		return nil, err
	}
	// The local chain checks its books every block: a broken conservation
	// invariant stops it at once, with the invariant's report.
	n.App = chain.New(cfg.Logger, db, nil, true, appOptions{"home": n.Home, server.FlagInvCheckPeriod: uint(1)},
		baseapp.SetChainID(cfg.ChainID), baseapp.SetMinGasPrices(appCfg.MinGasPrices), baseapp.SetIndexEvents(appCfg.IndexEvents))

	n.comet, err = cmtnode.NewNode(cometCfg, pv, nodeKey,
		proxy.NewLocalClientCreator(server.NewCometABCIWrapper(n.App)),
		func() (*cmttypes.GenesisDoc, error) {
			g, err := genutiltypes.AppGenesisFromFile(cometCfg.GenesisFile())
			if err != nil {
				return nil, err
			}
			return g.ToGenesisDoc()
		},
		cmtcfg.DefaultDBProvider,
		cmtnode.DefaultMetricsProvider(cometCfg.Instrumentation),
		servercmtlog.CometLoggerWrapper{Logger: cfg.Logger.With("module", "cometbft")},
	)
	if err != nil {
		return nil, fmt.Errorf("creating the CometBFT node: %w", err)
	}
	if err := n.comet.Start(); err != nil {
		return nil, fmt.Errorf("starting the CometBFT node: %w", err)
	}
	if err := n.startServers(cfg.Logger, appCfg); err != nil {
		return nil, err
	}
	n.conn, err = grpc.NewClient(n.GRPCAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	// Wait for a block made by this process: a resumed chain already has a
	// height, but until it commits its next block the app has no block
	// header to answer queries at the latest height with.
	if err := n.WaitForHeight(ctx, n.Height()+1); err != nil {
		return nil, fmt.Errorf("waiting for the first block: %w", err)
	}
	return n, nil
}

// cometConfig is the local chain's CometBFT config: loopback ports, no peers,
// and consensus timeouts scaled to blockTime.
func cometConfig(home string, blockTime time.Duration, p2pPort, rpcPort int) *cmtcfg.Config {
	cfg := chain.DefaultCometConfig()
	cfg.SetRoot(home)
	cfg.Moniker = "devshard-local"
	cfg.P2P.ListenAddress = fmt.Sprintf("tcp://127.0.0.1:%d", p2pPort)
	cfg.P2P.AllowDuplicateIP = true
	cfg.P2P.AddrBookStrict = false
	cfg.P2P.PexReactor = false
	cfg.RPC.ListenAddress = fmt.Sprintf("tcp://127.0.0.1:%d", rpcPort)
	cfg.RPC.PprofListenAddress = ""
	cfg.Instrumentation.Prometheus = false
	cfg.Consensus.TimeoutCommit = blockTime
	// A single validator proposes at once; these only matter if it stalls.
	cfg.Consensus.TimeoutPropose = max(blockTime, 500*time.Millisecond)
	cfg.Consensus.TimeoutPrevote = max(blockTime/2, 100*time.Millisecond)
	cfg.Consensus.TimeoutPrecommit = max(blockTime/2, 100*time.Millisecond)
	return cfg
}

func writeConfigs(cometCfg *cmtcfg.Config, appCfg *srvconfig.Config) error {
	if err := os.MkdirAll(filepath.Join(cometCfg.RootDir, "config"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(cometCfg.RootDir, "data"), 0o755); err != nil {
		return err
	}
	cmtcfg.WriteConfigFile(filepath.Join(cometCfg.RootDir, "config", "config.toml"), cometCfg)
	srvconfig.WriteConfigFile(filepath.Join(cometCfg.RootDir, "config", "app.toml"), appCfg)
	return nil
}

// writeGenesis funds the accounts, bonds the validator through a gentx and
// writes the genesis file.
func (n *Node) writeGenesis(cfg Config, cometCfg *cmtcfg.Config, pv *privval.FilePV) error {
	cdc := n.Encoding.Codec
	state := chain.DefaultGenesis(cdc, chain.Basics())

	n.Validator = Account{Name: "validator", Coins: ValidatorFunds}
	accounts := append([]Account{n.Validator}, cfg.Accounts...)
	var (
		authAccounts []authtypes.GenesisAccount
		balances     []banktypes.Balance
	)
	for i := range accounts {
		a := &accounts[i]
		if err := a.derive(); err != nil {
			return err
		}
		a.Address = sdk.AccAddress(a.Key.PubKey().Address())
		authAccounts = append(authAccounts, authtypes.NewBaseAccount(a.Address, nil, uint64(i), 0))
		balances = append(balances, banktypes.Balance{Address: a.Address.String(), Coins: a.Coins})
	}
	n.Validator, n.Accounts = accounts[0], accounts[1:]

	var auth authtypes.GenesisState
	cdc.MustUnmarshalJSON(state[authtypes.ModuleName], &auth)
	packed, err := authtypes.PackAccounts(authAccounts)
	if err != nil {
		return err
	}
	auth.Accounts = packed
	state[authtypes.ModuleName] = cdc.MustMarshalJSON(&auth)

	var bank banktypes.GenesisState
	cdc.MustUnmarshalJSON(state[banktypes.ModuleName], &bank)
	bank.Balances = banktypes.SanitizeGenesisBalances(balances)
	state[banktypes.ModuleName] = cdc.MustMarshalJSON(&bank)

	if cfg.Params != nil {
		var ds devshardtypes.GenesisState
		cdc.MustUnmarshalJSON(state[devshardtypes.ModuleName], &ds)
		ds.Params = *cfg.Params
		state[devshardtypes.ModuleName] = cdc.MustMarshalJSON(&ds)
	}

	gentx, err := n.gentx(cfg.ChainID, pv)
	if err != nil {
		return err
	}
	var genutil genutiltypes.GenesisState
	cdc.MustUnmarshalJSON(state[genutiltypes.ModuleName], &genutil)
	genutil.GenTxs = []json.RawMessage{gentx}
	state[genutiltypes.ModuleName] = cdc.MustMarshalJSON(&genutil)

	if cfg.Genesis != nil {
		if err := cfg.Genesis(cdc, state); err != nil {
			return err
		}
	}
	appState, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return err
	}
	consensus := chain.DefaultConsensusParams()
	if cfg.BlockMaxGas > 0 {
		consensus.Block.MaxGas = cfg.BlockMaxGas
	}
	g := genutiltypes.NewAppGenesisWithVersion(cfg.ChainID, appState)
	g.GenesisTime = time.Now().UTC()
	g.Consensus = &genutiltypes.ConsensusGenesis{Params: consensus}
	return g.SaveAs(cometCfg.GenesisFile())
}

// resumeAccounts fills in the keys and addresses of the accounts of a
// chain that already exists.
func (n *Node) resumeAccounts(cfg Config) error {
	n.Accounts = append([]Account(nil), cfg.Accounts...)
	for i := range n.Accounts {
		a := &n.Accounts[i]
		if a.Key == nil && a.Mnemonic == "" {
			return fmt.Errorf("resuming the chain in %s: account %q has neither a key nor a mnemonic", n.Home, a.Name)
		}
		if err := a.derive(); err != nil {
			return err
		}
		a.Address = sdk.AccAddress(a.Key.PubKey().Address())
	}
	return nil
}

// gentx is the validator's MsgCreateValidator, signed the way genesis
// expects: account number 0, sequence 0.
func (n *Node) gentx(chainID string, pv *privval.FilePV) (json.RawMessage, error) {
	consPub, err := cryptocodec.FromCmtPubKeyInterface(pv.Key.PubKey)
	if err != nil {
		return nil, err
	}
	msg, err := stakingtypes.NewMsgCreateValidator(
		sdk.ValAddress(n.Validator.Address).String(), consPub,
		sdk.NewCoin(chain.Denom, ValidatorStake),
		stakingtypes.NewDescription("devshard-local", "", "", "", ""),
		stakingtypes.NewCommissionRates(sdkmath.LegacyNewDecWithPrec(1, 1), sdkmath.LegacyNewDecWithPrec(2, 1), sdkmath.LegacyNewDecWithPrec(1, 2)),
		sdkmath.OneInt(),
	)
	if err != nil {
		return nil, err
	}
	txBytes, err := chainclient.SignOffline(n.Encoding.TxConfig, n.Validator.Key, chainID, 0, 0, 200_000, msg)
	if err != nil {
		return nil, err
	}
	tx, err := n.Encoding.TxConfig.TxDecoder()(txBytes)
	if err != nil {
		return nil, err
	}
	return n.Encoding.TxConfig.TxJSONEncoder()(tx)
}

func (n *Node) startServers(logger log.Logger, appCfg *srvconfig.Config) error {
	clientCtx := client.Context{}.
		WithCodec(n.Encoding.Codec).
		WithInterfaceRegistry(n.Encoding.InterfaceRegistry).
		WithTxConfig(n.Encoding.TxConfig).
		WithLegacyAmino(n.Encoding.Amino).
		WithAccountRetriever(authtypes.AccountRetriever{}).
		WithChainID(n.ChainID).
		WithHomeDir(n.Home).
		WithClient(local.New(n.comet))
	n.App.RegisterTxService(clientCtx)
	n.App.RegisterTendermintService(clientCtx)
	n.App.RegisterNodeService(clientCtx, *appCfg)

	grpcSrv, clientCtx, err := servergrpc.NewGRPCServerAndContext(clientCtx, n.App, appCfg.GRPC, logger.With("module", "grpc-server"))
	if err != nil {
		return err
	}
	apiSrv := api.New(clientCtx, logger.With("module", "api-server"), grpcSrv)
	n.App.RegisterAPIRoutes(apiSrv, appCfg.API)

	ctx, stop := context.WithCancel(context.Background())
	n.stop = stop
	n.servers, ctx = errgroup.WithContext(ctx)
	n.servers.Go(func() error { return servergrpc.StartGRPCServer(ctx, logger, appCfg.GRPC, grpcSrv) })
	n.servers.Go(func() error { return apiSrv.Start(ctx, *appCfg) })
	return nil
}

// Conn is a gRPC connection to the node, for query clients. Close closes it.
func (n *Node) Conn() *grpc.ClientConn { return n.conn }

// TxClient returns a client that signs and sends txs to this node.
func (n *Node) TxClient() *chainclient.Sender {
	return chainclient.NewSender(n.conn, n.ChainID, n.Encoding.TxConfig)
}

// Height is the latest block height whose state the app has committed, so
// queries see it. (The block store runs ahead: it saves a block before the
// app commits it.)
// It asks the app over ABCI, which CometBFT serializes with Commit.
func (n *Node) Height() int64 {
	info, err := n.comet.ProxyApp().Query().Info(context.Background(), proxy.RequestInfo)
	if err != nil {
		return 0
	}
	return info.LastBlockHeight
}

// WaitForHeight returns once a block at height h or above is committed.
func (n *Node) WaitForHeight(ctx context.Context, h int64) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n.Height() < h {
		select {
		case <-ctx.Done():
			return fmt.Errorf("height %d not reached (at %d): %w", h, n.Height(), context.Cause(ctx))
		case <-tick.C:
		}
	}
	return nil
}

// Close stops the servers and the node, closes the databases and removes a
// temporary home. It is safe to call on a partly started node.
func (n *Node) Close() error {
	var errs []error
	if n.conn != nil {
		errs = append(errs, n.conn.Close())
	}
	if n.stop != nil {
		n.stop()
		if err := n.servers.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	if n.comet != nil && n.comet.IsRunning() {
		errs = append(errs, n.comet.Stop())
		n.comet.Wait()
	}
	if n.App != nil {
		errs = append(errs, n.App.Close())
	}
	if n.removeHome {
		errs = append(errs, os.RemoveAll(n.Home))
	}
	return errors.Join(errs...)
}

// FreePorts returns n distinct loopback ports that were free a moment ago.
// They are drawn below the kernel's ephemeral range: every outgoing
// connection made before their owner binds them (the chain's own, another
// test's) takes an ephemeral port, so none of those can take one of these.
// Only another listener asking for the same port could, which is rare.
func FreePorts(n int) ([]int, error) {
	low := ephemeralLow()
	const floor = 10000 // clear of the well-known and registered services below it
	ports := make([]int, 0, n)
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		addr := "127.0.0.1:0" // the kernel's choice, if the range below is too small or full
		if low-floor >= 1000 && tries < 64*n {
			addr = fmt.Sprintf("127.0.0.1:%d", floor+rand.IntN(low-floor))
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			if addr == "127.0.0.1:0" {
				return nil, err
			}
			continue // taken: draw again
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// ip_local_port_range), or 32768 where it cannot be read.
func ephemeralLow() int {
	raw, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(raw)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				return v
			}
		}
	}
	return 32768
}

// appOptions is a fixed set of server options.
type appOptions map[string]any

func (o appOptions) Get(key string) any { return o[key] }
