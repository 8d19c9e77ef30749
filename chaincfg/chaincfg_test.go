package chaincfg_test

import (
	"time"

	"testing"

	sdkmath "cosmossdk.io/math"
	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/session/sessionpb"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// Every message a host or a gateway sends survives a tx round trip through
// the client encoding: set as a tx's messages, encoded, decoded, and the same
// messages come back.
func TestClientEncodingCarriesTheMessagesClientsSend(t *testing.T) {
	t.Parallel()
	enc := chaincfg.MakeEncoding()
	from := sdk.AccAddress(secp256k1.GenPrivKey().PubKey().Address())
	to := sdk.AccAddress(secp256k1.GenPrivKey().PubKey().Address())
	grant, err := authz.NewGrant(time.Unix(0, 0), authz.NewGenericAuthorization(sdk.MsgTypeURL(&devshardtypes.MsgSignSession{})), nil)
	require.NoError(t, err)
	msgs := []sdk.Msg{
		&devshardtypes.MsgCreateEscrow{Creator: from.String(), Amount: 7},
		&devshardtypes.MsgSettleEscrow{Sender: from.String(), Settlement: &sessionpb.Settlement{EscrowId: 3, Nonce: 9}},
		&devshardtypes.MsgClaimRewards{Participant: from.String(), EpochId: 2},
		&banktypes.MsgSend{FromAddress: from.String(), ToAddress: to.String(), Amount: sdk.NewCoins(sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(5)))},
		&authz.MsgGrant{Granter: from.String(), Grantee: to.String(), Grant: grant},
		&schedulertypes.MsgRetryFailedTask{Authority: from.String(), Id: 4},
	}
	for _, m := range msgs {
		t.Run(sdk.MsgTypeURL(m), func(t *testing.T) {
			tx := roundTrip(t, enc, m)
			require.Len(t, tx.GetMsgs(), 1)
			require.Equal(t, sdk.MsgTypeURL(m), sdk.MsgTypeURL(tx.GetMsgs()[0]))
		})
	}
}

// roundTrip sets m as a tx's message, encodes the tx and decodes it again.
func roundTrip(t *testing.T, enc chaincfg.Encoding, m sdk.Msg) sdk.Tx {
	t.Helper()
	b := enc.TxConfig.NewTxBuilder()
	require.NoError(t, b.SetMsgs(m))
	raw, err := enc.TxConfig.TxEncoder()(b.GetTx())
	require.NoError(t, err)
	tx, err := enc.TxConfig.TxDecoder()(raw)
	require.NoError(t, err, "the client encoding must resolve %s", sdk.MsgTypeURL(m))
	return tx
}

// Addresses print with the devshard prefix once an encoding was made:
// the SDK formats them through its global config.
func TestEncodingSetsTheAddressPrefixes(t *testing.T) {
	t.Parallel()
	chaincfg.MakeEncoding()
	a := sdk.AccAddress(secp256k1.GenPrivKey().PubKey().Address())
	require.Regexp(t, "^devshard1", a.String())
	require.Equal(t, chaincfg.Denom, sdk.DefaultBondDenom)
}
