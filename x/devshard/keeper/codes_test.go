package keeper_test

import (
	"testing"

	errorsmod "cosmossdk.io/errors"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/x/devshard/types"
)

// A client tells why the chain refused its tx from the tx's (codespace,
// code), so the keeper's errors must carry the code that says it: the
// bank's insufficient funds for an escrow the creator cannot lock, the
// protocol reason for a settlement the protocol package refused.
func TestRefusalsKeepTheirCodes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: w.gw.String(), Amount: gatewayFunds + 1})
	codespace, code, _ := errorsmod.ABCIInfo(err, false)
	require.Equal(t, sdkerrors.ErrInsufficientFunds.Codespace(), codespace)
	require.Equal(t, sdkerrors.ErrInsufficientFunds.ABCICode(), code)

	esc := w.create(t, 100_000)
	f := w.fixture(t, esc)
	m := f.Settle(run(t, f, 1), f.AllSlots()[0]) // one slot's signature: no quorum
	var want session.Reason
	require.ErrorAs(t, verify(f, m), &want)
	_, err = w.settle(w.gw, m)
	codespace, code, _ = errorsmod.ABCIInfo(err, false)
	reason, ok := types.ReasonOf(codespace, code)
	require.True(t, ok, "%s/%d", codespace, code)
	require.Equal(t, want, reason)
}

func verify(f *sessiontest.Fixture, m *sessionpb.Settlement) error {
	_, err := session.VerifySettlement(f.Snapshot, m, nil)
	return err
}
