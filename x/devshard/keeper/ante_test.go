package keeper_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	protov2 "google.golang.org/protobuf/proto"

	errorsmod "cosmossdk.io/errors"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/x/devshard/keeper"
	"github.com/devshard/devshard/x/devshard/types"
)

// anteTx is a tx carrying msgs, as the ante handler sees one.
type anteTx []sdk.Msg

func (t anteTx) GetMsgs() []sdk.Msg                    { return t }
func (t anteTx) GetMsgsV2() ([]protov2.Message, error) { return nil, nil }
func (t anteTx) ValidateBasic() error                  { return nil }
func (t anteTx) settle(ante sdk.AnteDecorator, ctx sdk.Context, simulate bool) (bool, error) {
	called := false
	_, err := ante.AnteHandle(ctx, t, simulate, func(ctx sdk.Context, _ sdk.Tx, _ bool) (sdk.Context, error) {
		called = true
		return ctx, nil
	})
	return called, err
}

// sameCode requires the mempool's refusal got to be the block's: want is
// what the message handler returned, which a block wraps with the index of
// the message that failed (index 0 here).
func sameCode(t *testing.T, want, got error) {
	t.Helper()
	want = errorsmod.Wrapf(want, "failed to execute message; message index: %d", 0)
	ws, wc, _ := errorsmod.ABCIInfo(want, false)
	gs, gc, _ := errorsmod.ABCIInfo(got, false)
	require.Equal(t, [2]any{ws, wc}, [2]any{gs, gc}, "the mempool's code must be the block's: block %v, mempool %v", want, got)
	require.Equal(t, want.Error(), got.Error())
}

// A settlement is checked when its tx enters the mempool: one the block
// would refuse is refused there with the block's code and sentence, and the
// signatures of one that passes are not checked on the curve again in its
// block. Not parallel: it reads the process's count of curve checks.
func TestSettlementAnteDecorator(t *testing.T) {
	w := newWorld(t)
	ante := keeper.NewSettlementAnteDecorator(w.k)
	check := w.ctx.WithIsCheckTx(true)
	settleTx := func(m *types.MsgSettleEscrow) anteTx { return anteTx{m} }

	// Without the mempool's check, a block checks the signatures.
	esc := w.create(t, 10_000)
	_, m := w.honest(t, esc, 2)
	before := signing.CurveChecks()
	_, err := w.settle(w.gw, m)
	require.NoError(t, err)
	require.NotZero(t, signing.CurveChecks()-before, "a settlement the mempool never saw is checked on the curve")

	// A valid settlement passes and changes nothing; its block then checks
	// none of its signatures on the curve.
	esc = w.create(t, 10_000)
	_, m = w.honest(t, esc, 2)
	msg := &types.MsgSettleEscrow{Sender: w.gw.String(), Settlement: m}
	called, err := settleTx(msg).settle(ante, check, false)
	require.NoError(t, err)
	require.True(t, called)
	got, err := w.k.Escrow(w.ctx, esc.Id)
	require.NoError(t, err)
	require.Equal(t, types.EscrowOpen, got.Status, "the mempool's check settles nothing")
	before = signing.CurveChecks()
	_, err = w.settle(w.gw, m)
	require.NoError(t, err)
	require.Zero(t, signing.CurveChecks()-before, "the block found every signature in the memo")

	// Settled since: the recheck after the block drops it, as the block would.
	_, blockErr := w.settle(w.gw, m)
	require.ErrorIs(t, blockErr, types.ErrEscrowClosed)
	_, err = settleTx(msg).settle(ante, check.WithIsReCheckTx(true), false)
	sameCode(t, blockErr, err)

	// Too few signatures: refused with the block's reason.
	esc = w.create(t, 10_000)
	_, bad := w.honest(t, esc, 2)
	bad.Signatures = bad.Signatures[:1]
	badMsg := &types.MsgSettleEscrow{Sender: w.gw.String(), Settlement: bad}
	called, err = settleTx(badMsg).settle(ante, check, false)
	require.False(t, called)
	require.ErrorIs(t, err, session.ReasonQuorum)
	cached := w.ctx.WithEventManager(sdk.NewEventManager())
	cache, _ := cached.CacheContext()
	_, blockErr = w.srv.SettleEscrow(cache, badMsg)
	sameCode(t, blockErr, err)

	// Several settlements in one tx: the refusal names the one refused.
	esc = w.create(t, 10_000)
	_, fine := w.honest(t, esc, 2)
	fineMsg := &types.MsgSettleEscrow{Sender: w.gw.String(), Settlement: fine}
	_, err = anteTx{fineMsg, badMsg}.settle(ante, check, false)
	require.ErrorIs(t, err, session.ReasonQuorum)
	require.ErrorContains(t, err, "message index: 1:")
	_, err = anteTx{badMsg, fineMsg}.settle(ante, check, false)
	require.ErrorContains(t, err, "message index: 0:")
	called, err = anteTx{fineMsg}.settle(ante, check, false)
	require.NoError(t, err)
	require.True(t, called)

	// A sender that is not an address.
	_, err = settleTx(&types.MsgSettleEscrow{Sender: "nobody", Settlement: bad}).settle(ante, check, false)
	require.ErrorIs(t, err, types.ErrSettlement)

	// Not checked: in a block, in a simulation, or beside another message
	// (which could change what the settlement is checked against).
	for name, c := range map[string]struct {
		ctx      sdk.Context
		simulate bool
		tx       anteTx
	}{
		"in a block":      {w.ctx, false, settleTx(badMsg)},
		"in a simulation": {check, true, settleTx(badMsg)},
		"beside another message": {check, false, anteTx{
			&types.MsgCreateEscrow{Creator: w.gw.String(), Amount: 1_000}, badMsg,
		}},
	} {
		called, err := c.tx.settle(ante, c.ctx, c.simulate)
		require.NoError(t, err, name)
		require.True(t, called, name)
	}
}
