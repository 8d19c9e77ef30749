package chain

import (
	"cosmossdk.io/x/upgrade"

	"github.com/cosmos/cosmos-sdk/codec"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	"github.com/cosmos/cosmos-sdk/types/module"
	"github.com/cosmos/cosmos-sdk/x/auth"
	authzmodule "github.com/cosmos/cosmos-sdk/x/authz/module"
	"github.com/cosmos/cosmos-sdk/x/bank"
	"github.com/cosmos/cosmos-sdk/x/consensus"
	distr "github.com/cosmos/cosmos-sdk/x/distribution"
	"github.com/cosmos/cosmos-sdk/x/genutil"
	genutiltypes "github.com/cosmos/cosmos-sdk/x/genutil/types"
	"github.com/cosmos/cosmos-sdk/x/gov"
	"github.com/cosmos/cosmos-sdk/x/staking"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/x/devshard"
	"github.com/devshard/devshard/x/scheduler"
)

// Encoding is how the chain encodes txs and messages; clients build theirs
// with chaincfg.MakeEncoding, which lacks only the modules they never send.
type Encoding = chaincfg.Encoding

// Basics are the modules' codec registrations and default genesis; they need
// no keeper. They must list the same modules as App.ModuleManager.
func Basics() module.BasicManager {
	return module.NewBasicManager(
		auth.AppModuleBasic{},
		genutil.NewAppModuleBasic(genutiltypes.DefaultMessageValidator),
		bank.AppModuleBasic{},
		staking.AppModuleBasic{},
		distr.AppModuleBasic{},
		gov.NewAppModuleBasic(nil),
		authzmodule.AppModuleBasic{},
		upgrade.AppModuleBasic{},
		consensus.AppModuleBasic{},
		scheduler.AppModule{},
		devshard.AppModule{},
	)
}

// MakeEncoding returns the chain's codecs with every module's types
// registered.
func MakeEncoding() Encoding {
	b := Basics()
	return chaincfg.NewEncoding(func(registry codectypes.InterfaceRegistry, amino *codec.LegacyAmino) {
		b.RegisterLegacyAminoCodec(amino)
		b.RegisterInterfaces(registry)
	})
}
