package types

import (
	"github.com/cosmos/cosmos-sdk/codec"
	"github.com/cosmos/cosmos-sdk/codec/legacy"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/msgservice"
)

// RegisterInterfaces registers the module's messages with the interface
// registry, so txs, authz grants and governance proposals can carry them.
func RegisterInterfaces(registry codectypes.InterfaceRegistry) {
	registry.RegisterImplementations((*sdk.Msg)(nil),
		&MsgRegisterParticipant{},
		&MsgUnregisterParticipant{},
		&MsgSignSession{},
		&MsgUpdateParams{},
		&MsgCancelEpoch{},
		&MsgCreateEscrow{},
		&MsgSettleEscrow{},
		&MsgClaimRewards{},
	)
	msgservice.RegisterMsgServiceDesc(registry, &_Msg_serviceDesc)
}

// RegisterLegacyAminoCodec registers the amino names, for ledger signing.
func RegisterLegacyAminoCodec(cdc *codec.LegacyAmino) {
	legacy.RegisterAminoMsg(cdc, &MsgRegisterParticipant{}, "devshard/MsgRegisterParticipant")
	legacy.RegisterAminoMsg(cdc, &MsgUnregisterParticipant{}, "devshard/MsgUnregisterParticipant")
	legacy.RegisterAminoMsg(cdc, &MsgSignSession{}, "devshard/MsgSignSession")
	legacy.RegisterAminoMsg(cdc, &MsgUpdateParams{}, "devshard/MsgUpdateParams")
	legacy.RegisterAminoMsg(cdc, &MsgCancelEpoch{}, "devshard/MsgCancelEpoch")
	legacy.RegisterAminoMsg(cdc, &MsgCreateEscrow{}, "devshard/MsgCreateEscrow")
	legacy.RegisterAminoMsg(cdc, &MsgSettleEscrow{}, "devshard/MsgSettleEscrow")
	legacy.RegisterAminoMsg(cdc, &MsgClaimRewards{}, "devshard/MsgClaimRewards")
}
