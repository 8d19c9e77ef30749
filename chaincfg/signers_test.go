package chaincfg_test

import (
	"bytes"
	"testing"

	"github.com/cosmos/cosmos-proto/anyutil"
	"github.com/stretchr/testify/require"
	protov2 "google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	authsigning "github.com/cosmos/cosmos-sdk/x/auth/signing"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/session/sessionpb"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// bigSettlement is a settlement of a 16-slot group as a gateway sends it:
// every slot's stats and signature.
func bigSettlement(sender string, escrow uint64) *devshardtypes.MsgSettleEscrow {
	s := &sessionpb.Settlement{EscrowId: escrow, Nonce: 40, Phase: sessionpb.Phase_PHASE_SETTLEMENT, Balance: 1_000, StateRoot: bytes.Repeat([]byte{7}, 32), RecordsRoot: bytes.Repeat([]byte{8}, 32)}
	for slot := range uint32(16) {
		s.HostStats = append(s.HostStats, &sessionpb.HostStats{Cost: 1234, Finished: 2, Validated: 1, LastConfirmedAt: 1_780_000_000})
		s.Signatures = append(s.Signatures, &sessionpb.SlotSignature{Slot: slot, Sig: &sessionpb.Signature{PubKey: bytes.Repeat([]byte{2}, 33), Sig: bytes.Repeat([]byte{9}, 64)}})
	}
	return &devshardtypes.MsgSettleEscrow{Sender: sender, Settlement: s}
}

// The SDK finds a tx's signers by decoding each message again into
// protobuf-go. Our messages decode into their generated types (api/), not
// into dynamicpb, and yield the signer the message names.
func TestSignersDecodeIntoGeneratedTypes(t *testing.T) {
	t.Parallel()
	enc := chaincfg.MakeEncoding()
	from := sdk.AccAddress(secp256k1.GenPrivKey().PubKey().Address())
	for _, m := range []sdk.Msg{
		bigSettlement(from.String(), 3),
		&devshardtypes.MsgCreateEscrow{Creator: from.String(), Amount: 7},
		&devshardtypes.MsgClaimRewards{Participant: from.String(), EpochId: 2},
		&schedulertypes.MsgRetryFailedTask{Authority: from.String(), Id: 4},
	} {
		t.Run(sdk.MsgTypeURL(m), func(t *testing.T) {
			tx := roundTrip(t, enc, m)
			signers, err := tx.(authsigning.SigVerifiableTx).GetSigners()
			require.NoError(t, err)
			require.Equal(t, [][]byte{from}, signers)
			v2, err := tx.(interface {
				GetMsgsV2() ([]protov2.Message, error)
			}).GetMsgsV2()
			require.NoError(t, err)
			require.Len(t, v2, 1)
			_, dynamic := v2[0].(*dynamicpb.Message)
			require.False(t, dynamic, "%s decoded through dynamicpb", sdk.MsgTypeURL(m))
		})
	}
}

// BenchmarkSettlementSigners finds the signer of a 16-slot settlement as
// the SDK does for every message of every tx (in the mempool and again in
// the block): through the generated type, and through dynamicpb as it did
// before api/ existed, in one run.
func BenchmarkSettlementSigners(b *testing.B) {
	enc := chaincfg.MakeEncoding()
	from := sdk.AccAddress(secp256k1.GenPrivKey().PubKey().Address())
	msg := bigSettlement(from.String(), 3)
	value, err := msg.Marshal()
	require.NoError(b, err)
	a := &anypb.Any{TypeUrl: sdk.MsgTypeURL(msg), Value: value}
	signing := enc.InterfaceRegistry.SigningContext()
	for _, path := range []struct {
		name  string
		types protoregistry.MessageTypeResolver
	}{
		{"generated", protoregistry.GlobalTypes},
		{"dynamicpb", dynamicpb.NewTypes(protoregistry.GlobalFiles)},
	} {
		b.Run(path.name, func(b *testing.B) {
			for b.Loop() {
				m, err := anyutil.Unpack(a, enc.InterfaceRegistry, path.types)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := signing.GetSigners(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
