package chain

import (
	"testing"

	"github.com/stretchr/testify/require"

	"cosmossdk.io/math"

	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	txsigning "github.com/cosmos/cosmos-sdk/types/tx/signing"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chainclient"
)

// The tx signature cache: a tx verified for the mempool skips the SDK's
// signature check in a block, and nothing else does.
func TestTxSigCache(t *testing.T) {
	t.Parallel()
	enc := MakeEncoding()
	key := secp256k1.GenPrivKeyFromSecret([]byte("sender"))
	from := sdk.AccAddress(key.PubKey().Address())
	send := &banktypes.MsgSend{FromAddress: from.String(), ToAddress: from.String(), Amount: sdk.NewCoins(sdk.NewCoin(Denom, math.OneInt()))}
	signed := func(seq uint64) ([]byte, sdk.Tx) {
		bz, err := chainclient.SignOffline(enc.TxConfig, key, "devshard-test", 7, seq, 100_000, send)
		require.NoError(t, err)
		tx, err := enc.TxConfig.TxDecoder()(bz)
		require.NoError(t, err)
		return bz, tx
	}
	bz, tx := signed(0)
	require.True(t, directOnly(tx))
	base := sdk.Context{}.WithChainID("devshard-test").WithIsSigverifyTx(true).WithTxBytes(bz)
	check, block := base.WithIsCheckTx(true), base.WithIsCheckTx(false)

	c := newTxSigCache()
	require.True(t, c.skipVerified(block, tx, false).IsSigverifyTx(), "a tx never verified here is verified in its block")
	c.remember(check.WithIsReCheckTx(true), tx, false)
	c.remember(check, tx, true)
	c.remember(block, tx, false)
	require.True(t, c.skipVerified(block, tx, false).IsSigverifyTx(), "a recheck, a simulation and a block verify nothing to remember")

	c.remember(check, tx, false)
	require.False(t, c.skipVerified(block, tx, false).IsSigverifyTx(), "verified for the mempool: the block skips the check")
	require.True(t, c.skipVerified(check, tx, false).IsSigverifyTx(), "CheckTx always verifies")
	require.True(t, c.skipVerified(block, tx, true).IsSigverifyTx(), "a simulation is left as it is")
	require.True(t, c.skipVerified(block.WithChainID("other-chain"), tx, false).IsSigverifyTx(), "another chain id signs other bytes")
	other, otherTx := signed(1)
	require.True(t, c.skipVerified(block.WithTxBytes(other), otherTx, false).IsSigverifyTx(), "other tx bytes")

	// Only SIGN_MODE_DIRECT: other modes sign bytes that may depend on state.
	b := enc.TxConfig.NewTxBuilder()
	require.NoError(t, b.SetMsgs(send))
	require.NoError(t, b.SetSignatures(txsigning.SignatureV2{
		PubKey: key.PubKey(), Data: &txsigning.SingleSignatureData{SignMode: txsigning.SignMode_SIGN_MODE_TEXTUAL, Signature: []byte{1}},
	}))
	textual := b.GetTx()
	require.False(t, directOnly(textual))
	c.remember(check, textual, false)
	require.True(t, c.skipVerified(block, textual, false).IsSigverifyTx())
}
