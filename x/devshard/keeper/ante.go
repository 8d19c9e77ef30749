package keeper

import (
	errorsmod "cosmossdk.io/errors"
	storetypes "cosmossdk.io/store/types"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/devshard/types"
)

// SettlementAnteDecorator checks settlements when their tx enters the
// mempool (CheckTx, and the recheck after each block), so that:
//   - a settlement the chain would refuse is refused before any block
//     carries it, with the same error code and sentence as in a block,
//     and a settlement whose escrow a block has since settled leaves the
//     mempool at the recheck;
//   - the signatures that verified are in the keeper's memo, so the block
//     that carries the tx checks each at the cost of a hash, not a curve
//     check: executing a block of settlements costs its books and its
//     writes, not their signatures.
//
// It runs after the SDK's decorators, so only a tx whose fee payer can pay
// and whose signature verified is checked, and it runs only on txs made of
// settlements alone: a message before a settlement may change what the
// settlement is checked against (the escrow it settles, the grants of a
// warm key), and such a tx is checked in its block only. It never runs in a
// block or in a simulation, and it charges the tx no gas: what a block does
// with the tx does not depend on it.
type SettlementAnteDecorator struct{ k Keeper }

// NewSettlementAnteDecorator returns the decorator for k.
func NewSettlementAnteDecorator(k Keeper) SettlementAnteDecorator {
	return SettlementAnteDecorator{k: k}
}

// AnteHandle implements sdk.AnteDecorator.
func (d SettlementAnteDecorator) AnteHandle(ctx sdk.Context, tx sdk.Tx, simulate bool, next sdk.AnteHandler) (sdk.Context, error) {
	if !ctx.IsCheckTx() || simulate {
		return next(ctx, tx, simulate)
	}
	msgs := tx.GetMsgs()
	settles := make([]*types.MsgSettleEscrow, 0, len(msgs))
	for _, msg := range msgs {
		m, ok := msg.(*types.MsgSettleEscrow)
		if !ok {
			return next(ctx, tx, simulate)
		}
		settles = append(settles, m)
	}
	// A cache the check's writes (there should be none) are dropped with,
	// and a meter apart from the tx's.
	check, _ := ctx.WithGasMeter(storetypes.NewInfiniteGasMeter()).CacheContext()
	for i, m := range settles {
		if err := d.precheck(check, m); err != nil {
			// Worded as a block words it, so a sender of several
			// settlements in one tx learns which one was refused.
			return ctx, errorsmod.Wrapf(err, "failed to execute message; message index: %d", i)
		}
	}
	return next(ctx, tx, simulate)
}

func (d SettlementAnteDecorator) precheck(ctx sdk.Context, m *types.MsgSettleEscrow) error {
	sender, err := d.k.addressCodec.StringToBytes(m.Sender)
	if err != nil {
		return types.ErrSettlement.Wrapf("sender %q is not a valid address: %v", m.Sender, err)
	}
	return d.k.PrecheckSettlement(ctx, sender, m.Settlement)
}
