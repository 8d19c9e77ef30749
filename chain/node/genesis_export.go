package node

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"time"

	cmtcfg "github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/privval"

	srvconfig "github.com/cosmos/cosmos-sdk/server/config"
	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain"
)

// This file lends the in-process node's genesis and config choices to
// chain/localnet, which runs the same chain as separate processes, so the
// two write the same genesis and the same config files.

// Derive fills in the account's Key from its Mnemonic (a fresh mnemonic if
// both are empty), as Start does, and its Address.
func (a *Account) Derive() error {
	if err := a.derive(); err != nil {
		return err
	}
	a.Address = sdk.AccAddress(a.Key.PubKey().Address())
	return nil
}

// WriteGenesis writes to file the genesis Start writes for cfg: the
// validator funded and bonded through its gentx (pv is its consensus
// key), cfg.Accounts funded, cfg.Params and cfg.Genesis applied and the
// chain's consensus params. cfg.ChainID must be set. It returns the
// validator's account and cfg.Accounts with keys and addresses.
func WriteGenesis(cfg Config, file string, pv *privval.FilePV) (validator Account, accounts []Account, err error) {
	if cfg.ChainID == "" {
		return Account{}, nil, errors.New("writing a genesis: no chain id")
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return Account{}, nil, err
	}
	cometCfg := cmtcfg.DefaultConfig()
	cometCfg.Genesis = abs
	n := &Node{ChainID: cfg.ChainID, Encoding: chain.MakeEncoding()}
	if err := n.writeGenesis(cfg, cometCfg, pv); err != nil {
		return Account{}, nil, err
	}
	return n.Validator, n.Accounts, nil
}

// Gentx is the MsgCreateValidator that bonds ValidatorStake from operator
// to the consensus key pv, signed for genesis, as Start's validator's.
func Gentx(encoding chain.Encoding, chainID string, operator Account, pv *privval.FilePV) (json.RawMessage, error) {
	n := &Node{ChainID: chainID, Encoding: encoding, Validator: operator}
	return n.gentx(chainID, pv)
}

// CometConfig is the CometBFT config Start runs with, rooted at home:
// loopback P2P and RPC on the given ports, no peer exchange, consensus
// timeouts scaled to blockTime.
func CometConfig(home string, blockTime time.Duration, p2pPort, rpcPort int) *cmtcfg.Config {
	return cometConfig(home, blockTime, p2pPort, rpcPort)
}

// WriteConfigs writes config.toml and app.toml under cometCfg's root, and
// makes its config and data directories.
func WriteConfigs(cometCfg *cmtcfg.Config, appCfg *srvconfig.Config) error {
	return writeConfigs(cometCfg, appCfg)
}
