package chain

import (
	"slices"
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

// IndexedEvents are the event attributes a node indexes for tx queries by
// default (app.toml index-events): what the chain client and explorers
// search by. The SDK's own default, an empty list, indexes every attribute
// of every event: a block of 1,000 settlements carries about 12,000 events
// and 60,000 attributes, and indexing them all cost a validator about as
// much CPU as executing the block's messages. A tx is always found by its
// hash and height. An operator who searches by more adds it to app.toml.
var IndexedEvents = []string{
	"message.action",
	"message.sender",
	"message.module",
	"devshard.devshard.v1.EventEscrowCreated.escrow_id",
	"devshard.devshard.v1.EventEscrowCreated.creator",
	"devshard.devshard.v1.EventEscrowSettled.escrow_id",
	"devshard.devshard.v1.EventSettlementPending.escrow_id",
	"devshard.devshard.v1.EventParticipantRegistered.address",
}

// DefaultAppConfig is the SDK's default app.toml with the REST API on, a
// zero minimum gas price in ushard (a public node should raise it), and
// IndexedEvents.
func DefaultAppConfig() *srvconfig.Config {
	cfg := srvconfig.DefaultConfig()
	cfg.IndexEvents = slices.Clone(IndexedEvents)
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
