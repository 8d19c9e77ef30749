package chaincfg

import (
	"github.com/cosmos/gogoproto/proto"

	"cosmossdk.io/x/tx/signing"

	"github.com/cosmos/cosmos-sdk/client"
	"github.com/cosmos/cosmos-sdk/codec"
	addresscodec "github.com/cosmos/cosmos-sdk/codec/address"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	"github.com/cosmos/cosmos-sdk/std"
	authtx "github.com/cosmos/cosmos-sdk/x/auth/tx"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	"github.com/cosmos/cosmos-sdk/x/authz"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	devshardtypes "github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"

	// The protobuf-go types of our protos (scripts/protocgen-chain.sh). The
	// SDK decodes every message of a tx a second time, into protobuf-go, to
	// find its signers; with these registered it decodes ours through
	// generated code rather than through dynamicpb.
	_ "github.com/devshard/devshard/api/devshard/devshard/v1"
	_ "github.com/devshard/devshard/api/devshard/scheduler/v1"
	_ "github.com/devshard/devshard/api/devshard/session/v1"
)

// Encoding is how the chain encodes txs and messages.
type Encoding struct {
	InterfaceRegistry codectypes.InterfaceRegistry
	Codec             codec.Codec
	TxConfig          client.TxConfig
	Amino             *codec.LegacyAmino
}

// MakeEncoding returns the encoding a client of the chain needs: the SDK's
// own types (keys, txs), the auth, bank and authz messages, and the devshard
// and scheduler messages. A client builds, signs and decodes those without
// the chain's other modules.
func MakeEncoding() Encoding {
	return NewEncoding(func(r codectypes.InterfaceRegistry, amino *codec.LegacyAmino) {
		authtypes.RegisterInterfaces(r)
		authtypes.RegisterLegacyAminoCodec(amino)
		banktypes.RegisterInterfaces(r)
		banktypes.RegisterLegacyAminoCodec(amino)
		authz.RegisterInterfaces(r)
		authz.RegisterLegacyAminoCodec(amino)
		devshardtypes.RegisterInterfaces(r)
		devshardtypes.RegisterLegacyAminoCodec(amino)
		schedulertypes.RegisterInterfaces(r)
		schedulertypes.RegisterLegacyAminoCodec(amino)
	})
}

// NewEncoding returns codecs with the SDK's own types and whatever register
// adds. The chain app passes every module it runs; clients use MakeEncoding.
func NewEncoding(register func(codectypes.InterfaceRegistry, *codec.LegacyAmino)) Encoding {
	SetAddressPrefixes()
	registry, err := codectypes.NewInterfaceRegistryWithOptions(codectypes.InterfaceRegistryOptions{
		// Our modules' protos are registered with gogoproto and, through
		// api/, with protobuf-go; the hybrid resolver finds every file.
		ProtoFiles: proto.HybridResolver,
		SigningOptions: signing.Options{
			AddressCodec:          addresscodec.NewBech32Codec(AccountAddressPrefix),
			ValidatorAddressCodec: addresscodec.NewBech32Codec(ValidatorAddressPrefix),
		},
	})
	if err != nil {
		panic(err)
	}
	amino := codec.NewLegacyAmino()
	std.RegisterLegacyAminoCodec(amino)
	std.RegisterInterfaces(registry)
	register(registry, amino)
	cdc := codec.NewProtoCodec(registry)
	return Encoding{
		InterfaceRegistry: registry,
		Codec:             cdc,
		TxConfig:          authtx.NewTxConfig(cdc, authtx.DefaultSignModes),
		Amino:             amino,
	}
}
