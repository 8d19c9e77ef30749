// Package chaincfg holds what every process that talks to the devshard
// chain must agree on with it: the bond denom, the bech32 address prefixes
// and the encoding of txs and messages. It links no keeper and no app, so a
// host or a gateway builds and signs txs without linking the chain itself.
package chaincfg

import (
	"sync"

	sdk "github.com/cosmos/cosmos-sdk/types"
)

// Address prefixes and the base denom of the chain.
const (
	AccountAddressPrefix   = "devshard"
	AccountPubKeyPrefix    = AccountAddressPrefix + "pub"
	ValidatorAddressPrefix = AccountAddressPrefix + "valoper"
	ValidatorPubKeyPrefix  = AccountAddressPrefix + "valoperpub"
	ConsensusAddressPrefix = AccountAddressPrefix + "valcons"
	ConsensusPubKeyPrefix  = AccountAddressPrefix + "valconspub"

	// Denom is the base denom: fees, staking, deposits and collateral.
	// 1 shard = 10^6 ushard.
	Denom = "ushard"
)

var prefixesOnce sync.Once

// SetAddressPrefixes makes the SDK's global config use the devshard bech32
// prefixes and denom. Much of the SDK formats addresses through that global
// (sdk.AccAddress.String), so every process that talks to the chain must call
// it before formatting an address; MakeEncoding and the chain's command tree
// do.
func SetAddressPrefixes() {
	prefixesOnce.Do(func() {
		cfg := sdk.GetConfig()
		cfg.SetBech32PrefixForAccount(AccountAddressPrefix, AccountPubKeyPrefix)
		cfg.SetBech32PrefixForValidator(ValidatorAddressPrefix, ValidatorPubKeyPrefix)
		cfg.SetBech32PrefixForConsensusNode(ConsensusAddressPrefix, ConsensusPubKeyPrefix)
		sdk.DefaultBondDenom = Denom
	})
}
