package chain

import (
	"time"

	cmtcfg "github.com/cometbft/cometbft/config"
	cmttypes "github.com/cometbft/cometbft/types"

	srvconfig "github.com/cosmos/cosmos-sdk/server/config"

	"github.com/devshard/devshard/chaincfg"
)

// The chain's names for chaincfg's prefixes and denom, which clients use
// without linking the app.
const (
	AccountAddressPrefix   = chaincfg.AccountAddressPrefix
	ValidatorAddressPrefix = chaincfg.ValidatorAddressPrefix
	ConsensusAddressPrefix = chaincfg.ConsensusAddressPrefix
	Denom                  = chaincfg.Denom
)

// SetAddressPrefixes is chaincfg.SetAddressPrefixes.
func SetAddressPrefixes() { chaincfg.SetAddressPrefixes() }

// DefaultCometConfig is CometBFT's default config with about one block a
// second: the timeouts a single local validator needs, not a WAN network's.
func DefaultCometConfig() *cmtcfg.Config {
	cfg := cmtcfg.DefaultConfig()
	cfg.Consensus.TimeoutPropose = time.Second
	cfg.Consensus.TimeoutProposeDelta = 200 * time.Millisecond
	cfg.Consensus.TimeoutPrevote = 500 * time.Millisecond
	cfg.Consensus.TimeoutPrevoteDelta = 200 * time.Millisecond
	cfg.Consensus.TimeoutPrecommit = 500 * time.Millisecond
	cfg.Consensus.TimeoutPrecommitDelta = 200 * time.Millisecond
	// Not exactly 1s: when the SDK writes a new config.toml it replaces
	// CometBFT's 1s default with 5s. 900ms plus the block's own work makes
	// about a second.
	cfg.Consensus.TimeoutCommit = 900 * time.Millisecond
	return cfg
}

// DefaultAppConfig is the SDK's default app.toml with the REST API on and a
// zero minimum gas price in ushard. A public node should raise the price.
func DefaultAppConfig() *srvconfig.Config {
	cfg := srvconfig.DefaultConfig()
	cfg.MinGasPrices = "0" + Denom
	cfg.API.Enable = true
	cfg.GRPC.Enable = true
	return cfg
}

// BlockMaxGas is the block gas limit the default genesis sets (an unlimited
// block is no limit). A 16-slot MsgSettleEscrow tx costs at most about 270k
// gas (docs/BENCHMARKS.md), so a block holds at least 1,000 of them.
const BlockMaxGas = 400_000_000

// DefaultConsensusParams are CometBFT's defaults with the block gas limit
// set to BlockMaxGas.
func DefaultConsensusParams() *cmttypes.ConsensusParams {
	p := cmttypes.DefaultConsensusParams()
	p.Block.MaxGas = BlockMaxGas
	return p
}
