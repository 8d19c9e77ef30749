// Package devnet runs a whole devshard network on one machine: a
// single-validator chain in this process, host daemons as child processes
// (the real `devshard host`), and a gateway in this process. It is what
// `devshard devnet` runs, and what the end-to-end tests start.
//
// Everything lives under one home directory, so running it again on the
// same home resumes the same chain, hosts and gateway.
package devnet

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	sdkmath "cosmossdk.io/math"
	"github.com/cosmos/cosmos-sdk/codec"
	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/internal/pgcluster"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Config shapes a local network. The zero value (plus Home) is the
// embedded default.
type Config struct {
	// Home holds everything (default ~/.devshard/devnet).
	Home string
	// Binary is the devshard executable the hosts run as (default: this
	// process's own executable).
	Binary string
	// Hosts is how many hosts serve (default 3).
	Hosts int
	// Validators is how many validators make the chain's blocks (default
	// 1, inside this process; more run as child processes). It is fixed
	// for a home.
	Validators int
	// BlockTime is the chain's block interval (default 500ms).
	BlockTime time.Duration
	// Params are the chain's devshard parameters (default: Params()).
	Params *devshardtypes.Params
	// ThinkTime is the built-in model's pause per token on every host
	// (default none).
	ThinkTime time.Duration
	// Storage is where the hosts keep their sessions (default sqlite). For
	// postgres and hybrid the hosts use the cluster the PG* variables name
	// if PGHOST is set, and otherwise the devnet's own, in <home>/postgres;
	// each host has its own database. It is fixed for a home.
	Storage Storage
	// Synchronous is the SQLite durability of the hosts and the gateway:
	// FULL (the default, fsync at every commit) or NORMAL.
	Synchronous string
	// Supervise restarts a host or worker process that exits on its own.
	Supervise bool
	// Workers is how many `devshard worker` processes each host hands its
	// jobs to, inferences included, each with a built-in executor child
	// (default none: the hosts run their jobs in process).
	Workers int
	// GatewayListen is the gateway's address (default: a free loopback port,
	// kept across runs).
	GatewayListen string
	// EscrowAmount is what each of the gateway's escrows locks.
	EscrowAmount uint64
	// Lanes is how many escrows the gateway runs at once (default 1).
	Lanes int
	// Progress receives one line per step (default: discarded).
	Progress io.Writer
	// Logger receives the gateway's logs (default: <home>/gateway/gateway.log).
	Logger *slog.Logger
	// HostArgs, if set, gives extra `devshard host` flags for host i: the
	// adversary suite runs a host against a model that lies this way.
	HostArgs func(i int) []string
	// HostConfig, if set, gives host i settings in TOML (docs/host.md), such
	// as "[validation]\nproxy = true\n". The devnet writes them, with the
	// chain's nodes, to <home>/host.toml, which the host reads at every start
	// and a proxy host reads through --conf-dir (StartProxy).
	HostConfig func(i int) string
	// Genesis, if set, may change any module's genesis of a new network
	// (a test shortens gov's voting period).
	Genesis func(cdc codec.JSONCodec, state chain.GenesisState) error
	// Accounts are extra funded accounts at genesis (a second gateway, an
	// attacker's); they follow the hosts and the gateway in Chain.Accounts.
	Accounts []node.Account
	// Versiond runs each host through `devshard versiond`: the chain
	// approves this binary as RuntimeV1 at genesis, served over HTTPS by
	// the devnet's BinaryServer, and each host's versiond installs it and
	// runs the host as its child; gov's voting period is
	// VersiondVotingPeriod. Hosts store in SQLite and run their jobs in
	// process. It is fixed for a home.
	Versiond bool
}

// maxValidators bounds Config.Validators: each is a process with its own
// copy of the state, on one machine.
const maxValidators = 16

// maxWorkers bounds Config.Workers: each is two processes (the worker and
// its executor child) per host, on one machine.
const maxWorkers = 8

// Funds at genesis, in the chain's denomination.
const (
	HostFunds    = 100_000_000
	GatewayFunds = 1_000_000_000
	Collateral   = 10_000_000
)

// Params are the devnet's chain parameters: short epochs and a small group,
// so a demo sees settlement, accounting and claims within a minute.
func Params() devshardtypes.Params {
	p := devshardtypes.DefaultParams()
	p.EpochLength = 20 // 10 s at 500 ms blocks
	p.SettlingEpochs = 1
	p.AccountingEpochs = 0
	p.ClaimableEpochs = 2
	p.GroupSize = 6
	p.MinCollateral = sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(1_000_000))
	p.TokenPrice = 10
	p.CreationFee = 1_000
	p.FeePerNonce = 2
	p.ExecutionTimeoutSeconds = 5
	p.ValidationRateBps = 2_000
	p.SealGraceSeconds = 5
	// The gateway settles an escrow when its epoch ends; the hosts step in
	// only a whole epoch later, so they do not race an honest gateway.
	p.SettlementWindowEpochs = 2
	// Unsettled escrows are refunded after a minute, not 20 s, so a host
	// restarted by hand has time to rejoin its groups' settlements.
	p.ExpiryEpochs = 6
	// A host's settlement of a root the gateway never finalized is paid 5 s
	// after it lands, unless a host answers with a later root meanwhile.
	p.SettlementChallengeBlocks = 10
	return p
}

// Info is <home>/devnet.json: every endpoint and the gateway's API key, for
// scripts.
type Info struct {
	Home    string `json:"home"`
	ChainID string `json:"chain_id"`
	// RPC, GRPC and REST are the first node's endpoints; Nodes lists
	// every node.
	RPC     string      `json:"rpc"`
	GRPC    string      `json:"grpc"`
	REST    string      `json:"rest"`
	Nodes   []ChainNode `json:"nodes"`
	Gateway GatewayRef  `json:"gateway"`
	Hosts   []HostRef   `json:"hosts"`
	// Workers are the hosts' workers, if any.
	Workers []WorkerRef `json:"workers,omitempty"`
	// Storage is where the hosts keep their sessions; Postgres, the
	// cluster, when that is postgres or hybrid.
	Storage   Storage      `json:"storage"`
	Postgres  *PostgresRef `json:"postgres,omitempty"`
	StartedAt time.Time    `json:"started_at"`
}

// GatewayRef describes the gateway in devnet.json.
type GatewayRef struct {
	URL     string `json:"url"`
	APIKey  string `json:"api_key"`
	Account string `json:"account"`
}

// HostRef describes a host in devnet.json.
type HostRef struct {
	Name    string `json:"name"`
	URL     string `json:"url"`
	Account string `json:"account"`
	Home    string `json:"home"`
	Log     string `json:"log"`
	// Database is the host's Postgres database, if it stores in one.
	Database string `json:"database,omitempty"`
}

// WorkerRef describes a worker in devnet.json.
type WorkerRef struct {
	Name    string `json:"name"`
	Host    string `json:"host"` // the host whose jobs it runs
	Account string `json:"account"`
	Home    string `json:"home"`
	Log     string `json:"log"`
}

// setup is what the first run decides and later runs reuse:
// <home>/setup.json, private (it holds the mnemonics).
type setup struct {
	// Storage is the hosts' storage; empty in homes made before it was
	// recorded, which stored in SQLite.
	Storage Storage `json:"storage,omitempty"`
	// Validators is the chain's validator count; 0 in homes made before
	// it was recorded, which ran one.
	Validators int `json:"validators,omitempty"`
	// Versiond is set in homes made with Config.Versiond.
	Versiond *versiondSetup `json:"versiond,omitempty"`
	Hosts    []hostSetup    `json:"hosts"`
	Gateway  struct {
		Mnemonic string `json:"mnemonic"`
		Listen   string `json:"listen"`
		APIKey   string `json:"api_key"`
	} `json:"gateway"`
}

type hostSetup struct {
	Mnemonic string `json:"mnemonic"`
	Listen   string `json:"listen"`
}

// Network is a running devnet.
type Network struct {
	Info  Info
	Chain *Chain
	Hosts []*Host
	// Workers are the hosts' workers, host by host.
	Workers []*Worker
	Gateway *gateway.Daemon
	// GatewayAccount is the gateway's funded account.
	GatewayAccount node.Account
	// Binaries serves runtime binaries to the hosts' versiond (nil unless
	// Config.Versiond); a test publishes other versions on it.
	Binaries      *BinaryServer
	cfg           Config
	gatewayConfig gateway.DaemonConfig
	pg            *pgServer // nil on SQLite
}

// Postgres is the devnet's own Postgres cluster, for a fault test to stop
// (Stop(pgcluster.Immediate) crashes it) and Start again on the same data
// and port. It is nil when the hosts store in SQLite or in the operator's
// cluster (PGHOST).
func (n *Network) Postgres() *pgcluster.Cluster {
	if n.pg == nil {
		return nil
	}
	return n.pg.own
}

// OpenGateway (re)starts the gateway on its home and address; after a Halt
// it resumes the gateway's sessions and settlements.
func (n *Network) OpenGateway(ctx context.Context) error {
	d, err := gateway.Open(ctx, n.gatewayConfig)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	n.Gateway = d
	return nil
}

func (c *Config) defaults() error {
	if c.Home == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return err
		}
		c.Home = filepath.Join(home, ".devshard", "devnet")
	}
	if c.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		c.Binary = exe
	}
	if c.Hosts == 0 {
		c.Hosts = 3
	}
	if c.Validators == 0 {
		c.Validators = 1
	}
	if c.Workers < 0 || c.Workers > maxWorkers {
		return fmt.Errorf("the devnet runs 0 to %d workers a host, got %d", maxWorkers, c.Workers)
	}
	if c.Validators < 0 || c.Validators > maxValidators {
		return fmt.Errorf("the devnet runs 1 to %d validators, got %d", maxValidators, c.Validators)
	}
	if c.BlockTime == 0 {
		c.BlockTime = 500 * time.Millisecond
	}
	if c.Params == nil {
		p := Params()
		c.Params = &p
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Synchronous == "" {
		c.Synchronous = "FULL"
	}
	if c.Storage == "" {
		c.Storage = StorageSQLite
	}
	if _, err := ParseStorage(string(c.Storage)); err != nil {
		return err
	}
	var drop []string
	if c.Versiond && c.Storage != StorageSQLite {
		drop = append(drop, "--storage "+string(c.Storage))
	}
	if c.Versiond && c.Workers > 0 {
		drop = append(drop, "--workers")
	}
	if len(drop) > 0 {
		return fmt.Errorf("a devnet run through versiond keeps each version's sessions in SQLite in its own directory and runs jobs in the hosts; drop %s, or drop --versiond", strings.Join(drop, " and "))
	}
	return nil
}

// stallAfter is how old the chain's last block grows before the gateway
// and the hosts say the chain makes no blocks: 10 block times, at least 5 s
// (an operator's chain, with its one-second blocks, waits 30 s).
func (c *Config) stallAfter() time.Duration { return max(10*c.BlockTime, 5*time.Second) }

// Start brings the network up, or resumes the one in Home. It returns once
// the hosts are effective in an ACTIVE epoch and the gateway serves.
func Start(ctx context.Context, cfg Config) (n *Network, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
		return nil, err
	}
	n = &Network{cfg: cfg}
	nw := n // the named result is nil on error returns
	defer func() {
		if err != nil {
			nw.Close(context.Background())
		}
	}()
	st, resumed, err := loadSetup(cfg)
	if err != nil {
		return nil, err
	}
	step := func(format string, args ...any) { fmt.Fprintf(cfg.Progress, "devnet: "+format+"\n", args...) }

	// 1. The chain.
	if resumed {
		step("resuming the network in %s", cfg.Home)
	}
	if cfg.Storage.usesPostgres() {
		if n.pg, err = startPostgres(ctx, cfg, resumed, step); err != nil {
			return nil, err
		}
	}
	var accounts []node.Account
	for i, h := range st.Hosts {
		accounts = append(accounts, node.Account{Name: fmt.Sprintf("host%d", i), Mnemonic: h.Mnemonic, Coins: coins(HostFunds)})
	}
	accounts = append(accounts, node.Account{Name: "gateway", Mnemonic: st.Gateway.Mnemonic, Coins: coins(GatewayFunds)})
	accounts = append(accounts, cfg.Accounts...)
	if cfg.Versiond {
		if n.Binaries, err = startBinaries(&cfg, st, step); err != nil {
			return nil, err
		}
		n.cfg = cfg
	}
	if n.Chain, err = startChain(ctx, cfg, accounts, step); err != nil {
		return nil, fmt.Errorf("chain: %w", err)
	}
	n.GatewayAccount = n.Chain.Accounts[len(st.Hosts)]
	for _, nd := range n.Chain.Nodes {
		step("chain %s: %s is up: rpc %s, grpc %s, rest %s", n.Chain.ChainID, nd.Name, nd.RPC, nd.GRPC, nd.REST)
	}
	if resumed {
		if err := n.checkProtocol(ctx); err != nil {
			return nil, err
		}
	}

	// 2. The hosts, as child processes.
	for i, hs := range st.Hosts {
		var ws []*Worker
		for j := range cfg.Workers {
			w, err := newWorker(cfg, i, j)
			if err != nil {
				return nil, err
			}
			ws = append(ws, w)
		}
		h, err := newHost(cfg, i, hs, n.Chain, n.pg)
		if err != nil {
			return nil, err
		}
		h.args = append(h.args, workerArgs(ws)...)
		n.Workers = append(n.Workers, ws...)
		switch cfg.Storage {
		case StoragePostgres:
			step("%s stores in postgres database %s", h.Name, h.Database)
		case StorageHybrid:
			step("%s stores in postgres database %s, falling back to SQLite in %s", h.Name, h.Database, h.Home)
		}
		n.Hosts = append(n.Hosts, h)
		if err := h.Start(); err != nil {
			return nil, err
		}
	}
	for _, h := range n.Hosts {
		if err := h.WaitHealthy(ctx, 30*time.Second); err != nil {
			return nil, err
		}
	}
	switch {
	case cfg.Versiond:
		step("the hosts store in SQLite (synchronous=%s), each runtime version in its own working directory (<home>/host<i>/versiond/versions/<name>/work)", cfg.Synchronous)
	case n.pg == nil:
		step("the hosts store in SQLite (synchronous=%s) under their homes", cfg.Synchronous)
	}
	step("%d hosts are listening: %s", len(n.Hosts), hostURLs(n.Hosts))
	if err := n.startWorkers(ctx, step); err != nil {
		return nil, err
	}

	// 3. Participants: registered once, effective from the next epoch.
	if err := n.register(ctx, step); err != nil {
		return nil, err
	}

	// 4. The gateway.
	gwKey, err := signing.PrivKeyFromBytes(n.GatewayAccount.Key.Key)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		if logger, err = fileLogger(filepath.Join(cfg.Home, "gateway", "gateway.log")); err != nil {
			return nil, err
		}
	}
	listen := st.Gateway.Listen
	if cfg.GatewayListen != "" {
		listen = cfg.GatewayListen
	}
	apiKey, err := gateway.HashAPIKey("devnet", st.Gateway.APIKey)
	if err != nil {
		return nil, err
	}
	chainGRPC, chainRPC := n.Chain.endpoints(len(n.Chain.Nodes) - 1)
	n.gatewayConfig = gateway.DaemonConfig{
		Listen: listen, Home: filepath.Join(cfg.Home, "gateway"),
		ChainGRPC: chainGRPC, ChainRPC: chainRPC, ChainID: n.Chain.ChainID,
		Key: gwKey, Keys: []gateway.APIKey{apiKey},
		Gateway: gateway.Config{EscrowAmount: cfg.EscrowAmount, Lanes: cfg.Lanes, ChainStallAfter: cfg.stallAfter()}, Synchronous: cfg.Synchronous,
		Logger: logger,
	}
	if err := n.OpenGateway(ctx); err != nil {
		return nil, err
	}
	step("gateway is serving on %s (account %s)", n.Gateway.URL(), n.GatewayAccount.Address)

	first := n.Chain.Nodes[0]
	n.Info = Info{Home: cfg.Home, ChainID: n.Chain.ChainID, RPC: first.RPC, GRPC: first.GRPC, REST: first.REST, Nodes: n.Chain.Nodes,
		Gateway: GatewayRef{URL: n.Gateway.URL(), APIKey: st.Gateway.APIKey, Account: n.GatewayAccount.Address.String()},
		Storage: cfg.Storage, StartedAt: time.Now().UTC()}
	if n.pg != nil {
		n.Info.Postgres = &n.pg.ref
	}
	for _, h := range n.Hosts {
		n.Info.Hosts = append(n.Info.Hosts, HostRef{Name: h.Name, URL: h.URL, Account: h.Account.String(), Home: h.Home, Log: h.LogPath, Database: h.Database})
	}
	for _, w := range n.Workers {
		n.Info.Workers = append(n.Info.Workers, WorkerRef{Name: w.Name, Host: w.Host, Account: w.Account.String(), Home: w.Home, Log: w.LogPath})
	}
	raw, _ := json.MarshalIndent(n.Info, "", "  ")
	if err := os.WriteFile(filepath.Join(cfg.Home, "devnet.json"), append(raw, '\n'), 0o600); err != nil {
		return nil, err
	}
	step("wrote %s", filepath.Join(cfg.Home, "devnet.json"))
	return n, nil
}

func coins(amount int64) sdk.Coins {
	return sdk.NewCoins(sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(amount)))
}

func hostURLs(hs []*Host) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.URL
	}
	return out
}

// HomeVersiond says whether the network in home (the default home when
// home is empty) was made with Config.Versiond; exists is false when home
// holds no network yet.
func HomeVersiond(home string) (made, exists bool, err error) {
	cfg := Config{Home: home}
	if home == "" {
		dir, err := os.UserHomeDir()
		if err != nil {
			return false, false, err
		}
		cfg.Home = filepath.Join(dir, ".devshard", "devnet")
	}
	path := filepath.Join(cfg.Home, "setup.json")
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, false, nil
	} else if err != nil {
		return false, false, err
	}
	var st setup
	if err := json.Unmarshal(raw, &st); err != nil {
		return false, false, fmt.Errorf("%s: %w (remove the home directory to start a new network)", path, err)
	}
	return st.Versiond != nil, true, nil
}

// loadSetup reads <home>/setup.json, or makes a new setup: fresh mnemonics,
// free ports and an API key.
func loadSetup(cfg Config) (*setup, bool, error) {
	path := filepath.Join(cfg.Home, "setup.json")
	raw, err := os.ReadFile(path)
	if err == nil {
		var st setup
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, false, fmt.Errorf("%s: %w (remove the home directory to start a new network)", path, err)
		}
		if len(st.Hosts) != cfg.Hosts {
			return nil, false, fmt.Errorf("%s has %d hosts, asked for %d; use another --home for a different network", path, len(st.Hosts), cfg.Hosts)
		}
		if made := cmp.Or(st.Storage, StorageSQLite); made != cfg.Storage {
			return nil, false, fmt.Errorf("%s was made with storage %s, asked for %s (the hosts' sessions would stay behind): pass --storage %s, or another --home for a different storage", path, made, cfg.Storage, made)
		}
		if made, asked := max(st.Validators, 1), max(cfg.Validators, 1); made != asked {
			return nil, false, fmt.Errorf("%s was made with %d validator(s), asked for %d (a chain's validators are fixed at its genesis): pass --validators %d, or another --home for a different network", path, made, asked, made)
		}
		if made := st.Versiond != nil; made != cfg.Versiond {
			return nil, false, fmt.Errorf("%s was made with versiond %t, asked for %t (the chain's genesis and the hosts' registered URLs depend on it): pass --versiond=%t, or another --home for a different network", path, made, cfg.Versiond, made)
		}
		return &st, true, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	st := setup{Storage: cfg.Storage, Validators: cfg.Validators}
	ports, err := node.FreePorts(cfg.Hosts + 2)
	if err != nil {
		return nil, false, err
	}
	for i := range cfg.Hosts {
		m, err := node.NewMnemonic()
		if err != nil {
			return nil, false, err
		}
		st.Hosts = append(st.Hosts, hostSetup{Mnemonic: m, Listen: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	if st.Gateway.Mnemonic, err = node.NewMnemonic(); err != nil {
		return nil, false, err
	}
	st.Gateway.Listen = fmt.Sprintf("127.0.0.1:%d", ports[cfg.Hosts])
	if cfg.Versiond {
		st.Versiond = &versiondSetup{BinariesListen: fmt.Sprintf("127.0.0.1:%d", ports[cfg.Hosts+1])}
	}
	_, st.Gateway.APIKey = gateway.NewAPIKey("devnet")
	raw, _ = json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return nil, false, err
	}
	return &st, false, nil
}

// checkProtocol refuses a resumed network whose chain runs another session
// protocol than this build: its hosts would refuse every escrow.
func (n *Network) checkProtocol(ctx context.Context) error {
	res, err := devshardtypes.NewQueryClient(n.Chain.Conn()).Params(ctx, &devshardtypes.QueryParamsRequest{})
	if err != nil {
		return fmt.Errorf("reading the chain's params: %w", err)
	}
	if v := res.Params.ProtocolVersion; v != session.ProtocolVersion {
		return fmt.Errorf("the network in %s was made by a build that runs session protocol %d; this build runs %d. Remove %s to start a new network, or pass another --home",
			n.cfg.Home, v, session.ProtocolVersion, n.cfg.Home)
	}
	return nil
}

// register makes every host a participant (once) and waits for an ACTIVE
// epoch in which all of them are effective.
func (n *Network) register(ctx context.Context, step func(string, ...any)) error {
	q := devshardtypes.NewQueryClient(n.Chain.Conn())
	fresh := 0
	for i, h := range n.Hosts {
		if _, err := q.Participant(ctx, &devshardtypes.QueryParticipantRequest{Address: h.Account.String()}); err == nil {
			continue
		}
		acct := n.Chain.Accounts[i]
		msg := &devshardtypes.MsgRegisterParticipant{Participant: acct.Address.String(), Url: h.URL,
			Collateral: sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(Collateral))}
		if _, err := n.Chain.TxClient().Send(ctx, acct.Key, msg); err != nil {
			return fmt.Errorf("registering %s: %w", h.Name, err)
		}
		fresh++
	}
	if fresh > 0 {
		step("registered %d hosts as participants (collateral %d each); they become effective next epoch", fresh, Collateral)
	}
	for {
		res, err := q.CurrentEpoch(ctx, &devshardtypes.QueryCurrentEpochRequest{})
		if err == nil && res.Epoch.State == devshardtypes.EpochActive && int(res.Epoch.Participants) >= len(n.Hosts) {
			step("epoch %d is ACTIVE with %d effective participants", res.Epoch.Id, res.Epoch.Participants)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the hosts to become effective: %w", ctx.Err())
		case <-time.After(n.cfg.BlockTime):
		}
	}
}

// Close stops the gateway (settling its open escrows within ctx), the
// hosts and the chain.
func (n *Network) Close(ctx context.Context) error {
	var errs []error
	if n.Gateway != nil {
		if err := n.Gateway.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("gateway: %w", err))
		}
	}
	for _, w := range n.Workers {
		w.Stop()
	}
	for _, h := range n.Hosts {
		h.Stop()
	}
	if err := n.Binaries.Close(); err != nil {
		errs = append(errs, fmt.Errorf("binary server: %w", err))
	}
	if err := n.pg.stop(); err != nil {
		errs = append(errs, fmt.Errorf("postgres: %w", err))
	}
	if n.Chain != nil {
		if err := n.Chain.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func fileLogger(path string) (*slog.Logger, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return slog.New(slog.NewTextHandler(f, nil)), nil
}

// waitHTTP polls url until it answers 200 or timeout passes.
func waitHTTP(ctx context.Context, url string, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within %s", url, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
