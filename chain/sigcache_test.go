package chain_test

import (
	"testing"
	"time"

	abci "github.com/cometbft/cometbft/abci/types"
	"github.com/stretchr/testify/require"

	sdk "github.com/cosmos/cosmos-sdk/types"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
)

// A block skips the signature check only of a tx this node verified for
// its mempool. A tx with a forged signature, refused by the mempool, fails
// in a block that carries it anyway (a proposer may put any bytes in its
// block); the genuine tx with the same sequence then passes.
func TestBlocksVerifyWhatTheMempoolRefused(t *testing.T) {
	t.Parallel()
	_, proposer := validatorKey()
	s := newScript(t)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := newReplica(t, s.genesis, start)
	r.apply(t, recordedBlock{Height: 1, Time: start.Add(time.Second)}, proposer)

	send := &banktypes.MsgSend{FromAddress: s.gateway.addr.String(), ToAddress: s.voter.addr.String(), Amount: sdk.NewCoins(sdk.NewInt64Coin(chain.Denom, 5))}
	good := s.sign(t, r.app, s.gateway, send)
	var raw txtypes.TxRaw
	require.NoError(t, raw.Unmarshal(good))
	raw.Signatures[0][10] ^= 1
	forged, err := raw.Marshal()
	require.NoError(t, err)

	for _, tx := range [][]byte{forged, good} {
		res, err := r.app.CheckTx(&abci.RequestCheckTx{Tx: tx, Type: abci.CheckTxType_New})
		require.NoError(t, err)
		if &tx[0] == &forged[0] {
			require.Equal(t, sdkerrors.ErrUnauthorized.ABCICode(), res.Code, "the mempool refuses the forged tx: %s", res.Log)
		} else {
			require.Zero(t, res.Code, res.Log)
		}
	}
	res := r.apply(t, recordedBlock{Height: 2, Time: start.Add(2 * time.Second), Txs: [][]byte{forged, good}}, proposer)
	require.Equal(t, sdkerrors.ErrUnauthorized.ABCICode(), res.TxResults[0].Code, "the forged tx fails in the block: %s", res.TxResults[0].Log)
	require.Zero(t, res.TxResults[1].Code, res.TxResults[1].Log)
}
