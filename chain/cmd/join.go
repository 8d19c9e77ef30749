package cmd

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	cmtcfg "github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/privval"
	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
	"github.com/spf13/cobra"

	"github.com/cosmos/cosmos-sdk/client/flags"
	srvconfig "github.com/cosmos/cosmos-sdk/server/config"
	genutiltypes "github.com/cosmos/cosmos-sdk/x/genutil/types"

	"github.com/devshard/devshard/chain"
)

// JoinConfig describes a full node that joins a network already running.
type JoinConfig struct {
	// Home is the new node's home. It must not hold a genesis yet.
	Home    string
	Moniker string
	// Genesis is the path of the network's genesis file, copied as it is.
	Genesis string
	// Peers are nodes of the network, as id@host:port; the new node keeps
	// connections to them (persistent peers).
	Peers []string
	// StateSyncRPC are RPC addresses of nodes of the network. If any is
	// given, the node restores the state from a peer's snapshot, and trusts
	// the latest block the first of them that answers reports. If none is
	// given, it replays every block from genesis (block sync).
	StateSyncRPC []string
	// Comet and App are the configs to write, rooted at Home by InitJoin
	// (nil: chain.DefaultCometConfig and chain.DefaultAppConfig). Their
	// peers and state-sync settings are set from the fields above.
	Comet *cmtcfg.Config
	App   *srvconfig.Config
}

// InitJoin writes a home for a node joining an existing network: the
// network's genesis, a fresh node key and consensus key, config.toml with
// the peers and, if asked, state sync from a trusted height, and app.toml.
// `devshard chain start --home` then runs the node. It returns the node's
// P2P id.
func InitJoin(ctx context.Context, cfg JoinConfig) (nodeID string, err error) {
	cometCfg, appCfg := cfg.Comet, cfg.App
	if cometCfg == nil {
		cometCfg = chain.DefaultCometConfig()
	}
	if appCfg == nil {
		appCfg = chain.DefaultAppConfig()
	}
	cometCfg.SetRoot(cfg.Home)
	if cfg.Moniker != "" {
		cometCfg.Moniker = cfg.Moniker
	}
	if _, err := os.Stat(cometCfg.GenesisFile()); err == nil {
		return "", fmt.Errorf("%s already holds a chain (%s exists); join into an empty or new directory", cfg.Home, cometCfg.GenesisFile())
	}
	genesis, err := os.ReadFile(cfg.Genesis)
	if err != nil {
		return "", fmt.Errorf("reading the network's genesis: %w", err)
	}
	if _, err := genutiltypes.AppGenesisFromReader(bytes.NewReader(genesis)); err != nil {
		return "", fmt.Errorf("%s is not a genesis file: %w", cfg.Genesis, err)
	}
	if len(cfg.Peers) == 0 {
		return "", errors.New("no peers: a joining node needs at least one node of the network, as id@host:port")
	}
	for _, p := range cfg.Peers {
		if _, err := p2p.NewNetAddressString(p); err != nil {
			return "", fmt.Errorf("peer %q is not id@host:port (the id is what `devshard chain comet show-node-id` prints on that node): %w", p, err)
		}
	}
	cometCfg.P2P.PersistentPeers = strings.Join(cfg.Peers, ",")

	if len(cfg.StateSyncRPC) > 0 {
		height, hash, err := trustedBlock(ctx, cfg.StateSyncRPC)
		if err != nil {
			return "", err
		}
		cometCfg.StateSync.Enable = true
		cometCfg.StateSync.RPCServers = cfg.StateSyncRPC
		if len(cfg.StateSyncRPC) == 1 {
			// CometBFT's light client wants a primary and a witness; the one
			// server given serves as both.
			cometCfg.StateSync.RPCServers = []string{cfg.StateSyncRPC[0], cfg.StateSyncRPC[0]}
		}
		cometCfg.StateSync.TrustHeight = height
		cometCfg.StateSync.TrustHash = hash
	}
	if err := cometCfg.ValidateBasic(); err != nil {
		return "", fmt.Errorf("the joining node's config: %w", err)
	}

	for _, dir := range []string{filepath.Join(cfg.Home, "config"), filepath.Join(cfg.Home, "data")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(cometCfg.GenesisFile(), genesis, 0o644); err != nil {
		return "", err
	}
	nodeKey, err := p2p.LoadOrGenNodeKey(cometCfg.NodeKeyFile())
	if err != nil {
		return "", err
	}
	// `start` loads a consensus key even on a node that never validates.
	privval.LoadOrGenFilePV(cometCfg.PrivValidatorKeyFile(), cometCfg.PrivValidatorStateFile())
	cmtcfg.WriteConfigFile(filepath.Join(cfg.Home, "config", "config.toml"), cometCfg)
	srvconfig.WriteConfigFile(filepath.Join(cfg.Home, "config", "app.toml"), appCfg)
	return string(nodeKey.ID()), nil
}

// trustedBlock is the height and hash of the latest block of the first of
// servers that answers: state sync verifies the snapshot it restores
// against it.
func trustedBlock(ctx context.Context, servers []string) (int64, string, error) {
	var errs []string
	for _, s := range servers {
		height, hash, err := latestBlock(ctx, s)
		if err == nil {
			return height, hash, nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", s, err))
	}
	return 0, "", fmt.Errorf("state sync needs a recent height and block hash from a node of the network, and no state-sync RPC server answered (%s); give a reachable one, or none to replay the chain from genesis",
		strings.Join(errs, "; "))
}

func latestBlock(ctx context.Context, server string) (int64, string, error) {
	c, err := rpchttp.New(server, "/websocket")
	if err != nil {
		return 0, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := c.Block(ctx, nil)
	if err != nil {
		return 0, "", err
	}
	return res.Block.Height, hex.EncodeToString(res.BlockID.Hash), nil
}

// joinCommand is `devshard chain join`.
func joinCommand() *cobra.Command {
	var (
		genesis, moniker string
		peers, rpcs      []string
	)
	cmd := &cobra.Command{
		Use:   "join",
		Short: "Make a home for a full node that joins a running network",
		Long: `Make a home for a full node of a network that is already running: it copies the
network's genesis, writes a new node key and config.toml with the network's nodes
as persistent peers, and app.toml. With --state-sync-rpc the node restores a
recent snapshot from its peers (which must take snapshots: snapshot-interval in
their app.toml) instead of replaying every block since genesis. Then run:

  devshard chain start --home <home>

The node does not validate; it follows the chain. See docs/chain.md.`,
		Example: `devshard chain join --home ./node --genesis genesis.json \
  --peers 3f1c...@10.0.0.1:26656,9ab0...@10.0.0.2:26656 \
  --state-sync-rpc http://10.0.0.1:26657,http://10.0.0.2:26657`,
		Args: cobra.NoArgs,
		// InitJoin writes the whole home; the root's setup would write a
		// default config.toml into it first.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { ensureContexts(cmd); return nil },
		RunE: func(cmd *cobra.Command, _ []string) error {
			home, err := cmd.Flags().GetString(flags.FlagHome)
			if err != nil {
				return err
			}
			id, err := InitJoin(cmd.Context(), JoinConfig{
				Home: home, Moniker: moniker, Genesis: genesis, Peers: peers, StateSyncRPC: rpcs,
			})
			if err != nil {
				return err
			}
			how := "block sync: it replays the chain from genesis"
			if len(rpcs) > 0 {
				how = "state sync from a peer's snapshot, then block sync"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s is ready in %s (%s)\nstart it with: devshard chain start --home %s\n", id, home, how, home)
			return nil
		},
	}
	cmd.Flags().StringVar(&genesis, "genesis", "", "the network's genesis file (required)")
	cmd.Flags().StringSliceVar(&peers, "peers", nil, "nodes of the network to connect to, comma-separated id@host:port (required)")
	cmd.Flags().StringSliceVar(&rpcs, "state-sync-rpc", nil, "RPC addresses of nodes of the network, comma-separated; given, the node state-syncs and trusts the latest block the first reachable one reports (default: block sync from genesis)")
	cmd.Flags().StringVar(&moniker, "moniker", "", "the node's name on the network (default: CometBFT's, the host name)")
	_ = cmd.MarkFlagRequired("genesis")
	_ = cmd.MarkFlagRequired("peers")
	return cmd
}
