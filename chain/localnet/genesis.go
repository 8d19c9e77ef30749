package localnet

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	cmtcfg "github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/privval"

	addresscodec "github.com/cosmos/cosmos-sdk/codec/address"
	srvconfig "github.com/cosmos/cosmos-sdk/server/config"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	"github.com/cosmos/cosmos-sdk/x/genutil"
	genutiltypes "github.com/cosmos/cosmos-sdk/x/genutil/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
)

// genesisFile is the network's genesis in its Home; every node's home
// holds a copy, and a joining node takes it from here.
const genesisFile = "genesis.json"

// create writes a new network into cfg.Home: a home per validator with
// its keys and configs, the genesis with every validator's gentx, and the
// network's record. It starts nothing.
func create(cfg Config) (*record, error) {
	if err := os.MkdirAll(cfg.Home, 0o755); err != nil {
		return nil, err
	}
	// All the ports at once, so that no two nodes draw the same.
	ports, err := node.FreePorts(4 * cfg.Validators)
	if err != nil {
		return nil, err
	}
	rec := &record{ChainID: cfg.ChainID, BlockTime: cfg.BlockTime, SnapshotInterval: cfg.SnapshotInterval}
	var pvs []*privval.FilePV
	for i := range cfg.Validators {
		nr := nodeRecord{
			Name: fmt.Sprintf("validator%d", i), Validator: true,
			Ports: nodePorts{P2P: ports[4*i], RPC: ports[4*i+1], GRPC: ports[4*i+2], API: ports[4*i+3]},
		}
		cometCfg, _ := nodeConfigs(filepath.Join(cfg.Home, nr.Name), nr, rec)
		if err := os.MkdirAll(filepath.Join(cometCfg.RootDir, "config"), 0o755); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(cometCfg.RootDir, "data"), 0o755); err != nil {
			return nil, err
		}
		pvs = append(pvs, privval.LoadOrGenFilePV(cometCfg.PrivValidatorKeyFile(), cometCfg.PrivValidatorStateFile()))
		key, err := p2p.LoadOrGenNodeKey(cometCfg.NodeKeyFile())
		if err != nil {
			return nil, err
		}
		nr.NodeID = string(key.ID())
		rec.Nodes = append(rec.Nodes, nr)
	}

	operators, accounts, err := writeGenesis(cfg, pvs)
	if err != nil {
		return nil, fmt.Errorf("writing the genesis: %w", err)
	}
	genesis, err := os.ReadFile(filepath.Join(cfg.Home, genesisFile))
	if err != nil {
		return nil, err
	}
	for i := range rec.Nodes {
		nr := &rec.Nodes[i]
		op := accountRecordOf(operators[i])
		nr.Operator = &op
		for j, peer := range rec.Nodes {
			if j != i {
				nr.Peers = append(nr.Peers, peer.p2pAddress())
			}
		}
		cometCfg, appCfg := nodeConfigs(filepath.Join(cfg.Home, nr.Name), *nr, rec)
		if err := node.WriteConfigs(cometCfg, appCfg); err != nil {
			return nil, err
		}
		if err := os.WriteFile(cometCfg.GenesisFile(), genesis, 0o644); err != nil {
			return nil, err
		}
	}
	for _, a := range accounts {
		rec.Accounts = append(rec.Accounts, accountRecordOf(a))
	}
	return rec, rec.write(cfg.Home)
}

// writeGenesis writes the network's genesis as chain/node writes its own,
// with the other validators' operators funded like the first, then
// collects every validator's gentx into it as `genesis collect-gentxs`
// does. It returns the validators' operator accounts and cfg.Accounts,
// with keys.
func writeGenesis(cfg Config, pvs []*privval.FilePV) (operators, accounts []node.Account, err error) {
	file := filepath.Join(cfg.Home, genesisFile)
	others := make([]node.Account, len(pvs)-1)
	for i := range others {
		others[i] = node.Account{Name: fmt.Sprintf("validator%d", i+1), Coins: node.ValidatorFunds}
	}
	first, funded, err := node.WriteGenesis(node.Config{
		ChainID: cfg.ChainID, Params: cfg.Params, Genesis: cfg.Genesis,
		Accounts: append(others, cfg.Accounts...),
	}, file, pvs[0])
	if err != nil {
		return nil, nil, err
	}
	first.Name = "validator0"
	operators = append([]node.Account{first}, funded[:len(others)]...)
	accounts = funded[len(others):]

	encoding := chain.MakeEncoding()
	dir := filepath.Join(cfg.Home, "gentx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	for i, op := range operators {
		tx, err := node.Gentx(encoding, cfg.ChainID, op, pvs[i])
		if err != nil {
			return nil, nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, op.Name+".json"), tx, 0o644); err != nil {
			return nil, nil, err
		}
	}
	g, err := genutiltypes.AppGenesisFromFile(file)
	if err != nil {
		return nil, nil, err
	}
	// CollectTxs checks each gentx against the genesis balances, as the
	// operators' collect-gentxs does.
	txs, _, err := genutil.CollectTxs(encoding.Codec, encoding.TxConfig.TxJSONDecoder(), "", dir, g,
		banktypes.GenesisBalancesIterator{}, genutiltypes.DefaultMessageValidator,
		addresscodec.NewBech32Codec(chain.ValidatorAddressPrefix))
	if err != nil {
		return nil, nil, fmt.Errorf("collecting the gentxs: %w", err)
	}
	state, err := genutiltypes.GenesisStateFromAppGenesis(g)
	if err != nil {
		return nil, nil, err
	}
	if state, err = genutil.SetGenTxsInAppGenesisState(encoding.Codec, encoding.TxConfig.TxJSONEncoder(), state, txs); err != nil {
		return nil, nil, err
	}
	if g.AppState, err = json.MarshalIndent(state, "", "  "); err != nil {
		return nil, nil, err
	}
	return operators, accounts, g.SaveAs(file)
}

// nodeConfigs are the configs of a node of the network: chain/node's, on
// the node's loopback ports, with its peers and snapshots.
func nodeConfigs(home string, nr nodeRecord, rec *record) (*cmtcfg.Config, *srvconfig.Config) {
	cometCfg := node.CometConfig(home, rec.BlockTime, nr.Ports.P2P, nr.Ports.RPC)
	cometCfg.Moniker = nr.Name
	cometCfg.P2P.PersistentPeers = strings.Join(nr.Peers, ",")
	// The least CometBFT allows; only a node that state-syncs waits it.
	cometCfg.StateSync.DiscoveryTime = 5 * time.Second
	appCfg := chain.DefaultAppConfig()
	appCfg.GRPC.Address = nr.grpcAddress()
	appCfg.API.Address = fmt.Sprintf("tcp://127.0.0.1:%d", nr.Ports.API)
	appCfg.StateSync.SnapshotInterval = rec.SnapshotInterval
	appCfg.StateSync.SnapshotKeepRecent = 2
	return cometCfg, appCfg
}
