package keeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"cosmossdk.io/collections"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// SignatureGas is charged per signature a settlement carries: the price of
// one secp256k1 verification, as the auth module charges for a tx signature.
const SignatureGas = 1000

// Payout destinations, as reported in EventEscrowPayout.
const (
	DestLedger  = "ledger"  // the host's ledger for the escrow's epoch (not yet accounted)
	DestSummary = "summary" // the host's unclaimed summary of the accounted epoch
	DestHost    = "host"    // sent to the host: it already claimed, or the claim window is over
	DestCreator = "creator" // back to the creator: the host is punished, unknown or inactive
	DestRefund  = "refund"  // the session's unspent balance, back to the creator
)

// SettleEscrow verifies a settlement with the protocol package and applies
// it. The keeper adds no settlement rule: who may settle, and at which phase
// (session.MaySettle), whether the settlement is valid
// (session.VerifySettlement, which binds that phase to the signed root),
// whether it replaces a pending one (session.MaySupersede) and whether it is
// paid at once (session.PaysAtOnce) are the protocol package's, against the
// escrow's snapshot. A settlement that is not paid at once waits out its
// challenge window (holdSettlement); the scheduler pays it when the window
// closes (closeSettlementWindow).
func (k Keeper) SettleEscrow(ctx sdk.Context, sender sdk.AccAddress, m *sessionpb.Settlement) (*types.MsgSettleEscrowResponse, error) {
	if m == nil {
		return nil, types.ErrSettlement.Wrap("the message carries no settlement")
	}
	esc, plan, err := k.checkSettlement(ctx, sender, m)
	if err != nil {
		return nil, err
	}
	if err := emitIgnored(ctx, esc.Id, plan.Ignored); err != nil {
		return nil, err
	}
	if !session.PaysAtOnce(m) {
		return k.holdSettlement(ctx, esc, sender, m)
	}
	if esc.Pending != nil {
		// The finalized root is the session's last: it ends the window.
		if err := k.scheduler.Unschedule(ctx, esc.Pending.TaskId); err != nil {
			return nil, err
		}
	}
	if err := k.payOut(ctx, esc, plan, sender.String(), m.Nonce); err != nil {
		return nil, err
	}
	return &types.MsgSettleEscrowResponse{Paid: plan.Amount - plan.Refund, Refund: plan.Refund}, nil
}

// PrecheckSettlement runs every check SettleEscrow runs, against the state
// of ctx, and changes nothing. The chain runs it when a settlement's tx
// enters the mempool (SettlementAnteDecorator): a settlement that would fail
// is refused there with the reason, and the signatures that passed are
// remembered in the keeper's memo, so the block that carries the tx checks
// them at the cost of a hash.
func (k Keeper) PrecheckSettlement(ctx sdk.Context, sender sdk.AccAddress, m *sessionpb.Settlement) error {
	if m == nil {
		return types.ErrSettlement.Wrap("the message carries no settlement")
	}
	_, _, err := k.checkSettlement(ctx, sender, m)
	return err
}

// checkSettlement is the read-only part of SettleEscrow: the escrow, who may
// settle it at which phase, the books, the quorum and whether it may
// replace the pending settlement. Signatures go through the keeper's memo;
// the outcome is the same without it.
func (k Keeper) checkSettlement(ctx sdk.Context, sender sdk.AccAddress, m *sessionpb.Settlement) (types.Escrow, *session.Plan, error) {
	esc, err := k.Escrow(ctx, m.EscrowId)
	if err != nil {
		return esc, nil, err
	}
	if esc.Status != types.EscrowOpen {
		return esc, nil, types.ErrEscrowClosed.Wrapf("escrow %d is %s; only an OPEN escrow can be settled", esc.Id, esc.Status)
	}
	cur, err := k.currentEpochID(ctx)
	if err != nil {
		return esc, nil, err
	}
	ctx.GasMeter().ConsumeGas(SignatureGas*uint64(len(m.Signatures)), "settlement signatures")
	from, err := signing.AddressFromBytes(sender)
	if err != nil {
		return esc, nil, types.ErrSettlement.Wrapf("sender: %v", err)
	}
	auth := k.Authorizer(ctx)
	if err := session.MaySettle(&esc.Snapshot, from, m.Phase, cur >= esc.DeadlineEpoch, auth); err != nil {
		return esc, nil, types.SettlementRejected(err, fmt.Sprintf(" (deadline: epoch %d, current epoch %d)", esc.DeadlineEpoch, cur))
	}
	plan, err := session.VerifySettlementWith(&esc.Snapshot, m, auth, k.sigMemo)
	if err != nil {
		return esc, nil, types.SettlementRejected(err, "")
	}
	var pending *sessionpb.Settlement
	if esc.Pending != nil {
		pending = &esc.Pending.Settlement
	}
	if err := session.MaySupersede(&esc.Snapshot, pending, m); err != nil {
		return esc, nil, types.SettlementRejected(err, fmt.Sprintf(" (its window closes at the end of block %d)", esc.Pending.WindowEndHeight))
	}
	return esc, plan, nil
}

// emitIgnored reports the signatures a settlement carried that did not
// count, so the host whose signature failed (a revoked warm key, say) can
// be told.
func emitIgnored(ctx sdk.Context, escrowID uint64, ignored []session.IgnoredSignature) error {
	if len(ignored) == 0 {
		return nil
	}
	ev := &types.EventSettlementSignaturesIgnored{EscrowId: escrowID}
	for _, ig := range ignored {
		ev.Slots = append(ev.Slots, ig.Slot)
		ev.Reasons = append(ev.Reasons, ig.Error())
	}
	return ctx.EventManager().EmitTypedEvent(ev)
}

// holdSettlement stores a verified settlement that is not paid at once as
// the escrow's pending one. The first opens the challenge window and
// schedules its close; a later one (a higher nonce) replaces it in the same
// window, so a stream of ever higher roots cannot delay the payment. The
// escrow leaves the expiry index meanwhile: expiry must not refund the
// coins the window is about to pay.
func (k Keeper) holdSettlement(ctx sdk.Context, esc types.Escrow, sender sdk.AccAddress, m *sessionpb.Settlement) (*types.MsgSettleEscrowResponse, error) {
	var superseded uint64
	if esc.Pending == nil {
		params, err := k.Params.Get(ctx)
		if err != nil {
			return nil, err
		}
		end := ctx.BlockHeight() + params.SettlementChallengeBlocks
		ids, err := k.scheduler.Schedule(ctx, schedulertypes.NewTask{
			Type: types.TaskSettlementWindow, DueHeight: end, Payload: binary.BigEndian.AppendUint64(nil, esc.Id),
		})
		if err != nil {
			return nil, fmt.Errorf("scheduling the challenge window of escrow %d: %w", esc.Id, err)
		}
		esc.Pending = &types.PendingSettlement{WindowEndHeight: end, TaskId: ids[0]}
		if err := k.EscrowExpiry.Remove(ctx, collections.Join(esc.ExpiryEpoch, esc.Id)); err != nil {
			return nil, err
		}
		if err := k.Pending.Set(ctx, esc.Id); err != nil {
			return nil, err
		}
	} else {
		superseded = esc.Pending.Settlement.Nonce
	}
	stored := *m
	stored.Signatures = nil // verified now; the window's close pays the books
	esc.Pending.Sender = sender.String()
	esc.Pending.Settlement = stored
	esc.Pending.SubmittedHeight = ctx.BlockHeight()
	if err := k.Escrows.Set(ctx, esc.Id, esc); err != nil {
		return nil, err
	}
	return &types.MsgSettleEscrowResponse{Pending: true, WindowEndHeight: esc.Pending.WindowEndHeight},
		ctx.EventManager().EmitTypedEvent(&types.EventSettlementPending{
			EscrowId: esc.Id, Sender: sender.String(), Nonce: m.Nonce, WindowEndHeight: esc.Pending.WindowEndHeight, SupersededNonce: superseded,
		})
}

// closeSettlementWindow is the TaskSettlementWindow handler: it pays the
// escrow's pending settlement as a settlement is paid at once. An escrow
// already settled (a finalized root ended the window) has nothing left to
// pay. An error leaves the settlement pending and the task is retried; it
// never halts the chain.
func (k Keeper) closeSettlementWindow(ctx context.Context, task schedulertypes.Task) error {
	if len(task.Payload) != 8 {
		return fmt.Errorf("task %d (%s) has a %d-byte payload; want the 8-byte escrow id", task.Id, task.Type, len(task.Payload))
	}
	sdkCtx := sdk.UnwrapSDKContext(ctx)
	esc, err := k.Escrow(sdkCtx, binary.BigEndian.Uint64(task.Payload))
	if err != nil {
		return err
	}
	if esc.Status != types.EscrowOpen || esc.Pending == nil {
		return nil
	}
	plan, err := session.VerifyBooks(&esc.Snapshot, &esc.Pending.Settlement)
	if err != nil {
		return types.SettlementRejected(err, " (paying the pending settlement)")
	}
	return k.payOut(sdkCtx, esc, plan, esc.Pending.Sender, esc.Pending.Settlement.Nonce)
}

// payOut applies a verified plan: each host's payout where route sends it,
// the refund to the creator, and the escrow SETTLED.
func (k Keeper) payOut(ctx sdk.Context, esc types.Escrow, plan *session.Plan, sender string, nonce uint64) error {
	creator := sdk.AccAddress(esc.Snapshot.Creator)
	toCreator := plan.Refund
	stats, err := statsByAddress(plan)
	if err != nil {
		return err
	}
	// Read once for every host the plan pays.
	epoch, err := k.Epoch(ctx, esc.Snapshot.Epoch)
	if err != nil {
		return err
	}
	params, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	for _, a := range plan.ByAddress() {
		amount, ok := addU64(a.Cost, a.FeeShare)
		if !ok {
			return types.ErrOverflow.Wrapf("payout to %s overflows", sdk.AccAddress(a.Address[:]))
		}
		dest, reason, err := k.route(ctx, esc, epoch, params.MaxConsecutiveInvalid, sdk.AccAddress(a.Address[:]), amount, stats[a.Address])
		if err != nil {
			return err
		}
		if dest == DestCreator {
			if toCreator, ok = addU64(toCreator, amount); !ok {
				return types.ErrOverflow.Wrap("creator refund overflows")
			}
		}
		ctx.EventManager().EmitEvent((&types.EventEscrowPayout{
			EscrowId: esc.Id, Address: sdk.AccAddress(a.Address[:]).String(), Amount: amount, Destination: dest, Reason: reason,
		}).AsEvent())
	}
	if toCreator > 0 {
		if err := k.bank.SendCoinsFromModuleToAccount(ctx, types.ModuleName, creator, esc.Coins(toCreator)); err != nil {
			return fmt.Errorf("refunding %d to creator %s: %w", toCreator, creator, err)
		}
	}
	ctx.EventManager().EmitEvent((&types.EventEscrowPayout{
		EscrowId: esc.Id, Address: esc.Creator, Amount: plan.Refund, Destination: DestRefund, Reason: "unspent balance",
	}).AsEvent())

	if err := k.EscrowExpiry.Remove(ctx, collections.Join(esc.ExpiryEpoch, esc.Id)); err != nil {
		return err
	}
	if err := k.Pending.Remove(ctx, esc.Id); err != nil {
		return err
	}
	esc.Status = types.EscrowSettled
	esc.Pending = nil
	if err := k.Escrows.Set(ctx, esc.Id, esc); err != nil {
		return err
	}
	ctx.EventManager().EmitEvent((&types.EventEscrowSettled{
		EscrowId: esc.Id, Sender: sender, Nonce: nonce, Paid: plan.Amount - plan.Refund, Refund: plan.Refund,
	}).AsEvent())
	return nil
}

// route sends one host's payout where DESIGN.md says it goes and reports
// the destination. DestCreator means the caller refunds the creator. epoch
// is the escrow's epoch and streakLimit the max_consecutive_invalid param.
//
//   - The escrow's epoch is not yet accounted (ACTIVE or SETTLING) and the
//     host is an ACTIVE member of it: its ledger (pay).
//   - The epoch is accounted and the host was not punished in it: its
//     unclaimed summary; or straight to the host if it already claimed, or
//     the epoch is CLOSED or CANCELLED. The stats go to the summary and the
//     invalid streak as on the ledger path.
//   - Otherwise (punished, not a member, inactive or invalid): the creator.
func (k Keeper) route(ctx sdk.Context, esc types.Escrow, epoch types.Epoch, streakLimit uint64, host sdk.AccAddress, amount uint64, stats types.InferenceStats) (dest, reason string, err error) {
	epochID := epoch.Id
	switch epoch.State {
	case types.EpochActive, types.EpochSettling:
		p, err := k.Participants.Get(ctx, host)
		if errors.Is(err, collections.ErrNotFound) {
			return DestCreator, "host is not a registered participant", nil
		} else if err != nil {
			return "", "", err
		}
		if p.Status != types.ParticipantActive {
			return DestCreator, fmt.Sprintf("host is %s", p.Status), nil
		}
		if err := k.credit(ctx, epochID, host, amount, stats); errors.Is(err, types.ErrNotMember) {
			return DestCreator, fmt.Sprintf("host is not a member of epoch %d", epochID), nil
		} else if err != nil {
			return "", "", err
		}
		return DestLedger, "", k.applyStreak(ctx, host, p, streakLimit, stats)
	}

	key := collections.Join(epochID, host)
	sum, err := k.Summaries.Get(ctx, key)
	if errors.Is(err, collections.ErrNotFound) {
		return DestCreator, fmt.Sprintf("host has no performance summary for epoch %d (%s)", epochID, epoch.State.Short()), nil
	} else if err != nil {
		return "", "", err
	}
	if sum.Punished {
		return DestCreator, fmt.Sprintf("host was punished in epoch %d", epochID), nil
	}
	direct := sum.Claimed || sum.Swept || epoch.State.IsFinal()
	if err := addStats(&sum.Stats, stats); err != nil {
		return "", "", err
	}
	var ok bool
	if sum.Earned, ok = addU64(sum.Earned, amount); !ok {
		return "", "", types.ErrOverflow.Wrapf("summary of %s in epoch %d overflows", host, epochID)
	}
	if !direct {
		if sum.Rewarded, ok = addU64(sum.Rewarded, amount); !ok {
			return "", "", types.ErrOverflow.Wrapf("summary of %s in epoch %d overflows", host, epochID)
		}
	}
	if err := k.Summaries.Set(ctx, key, sum); err != nil {
		return "", "", err
	}
	// The status moves from settled stats whichever epoch they settle in; a
	// summary with no participant behind it (an imported genesis may hold
	// one) has no status to move, and its pay must not be held up.
	if err := k.recordStreak(ctx, host, streakLimit, stats); err != nil && !errors.Is(err, types.ErrParticipantNotFound) {
		return "", "", err
	}
	if !direct {
		return DestSummary, "", nil
	}
	if amount > 0 {
		if err := k.bank.SendCoinsFromModuleToAccount(ctx, types.ModuleName, host, esc.Coins(amount)); err != nil {
			return "", "", err
		}
	}
	return DestHost, fmt.Sprintf("epoch %d is %s and the summary is settled", epochID, epoch.State.Short()), nil
}

// statsByAddress sums each address's slot stats. Validated and
// validations_done are attested by the quorum but not bounded by the nonce,
// so the sums are overflow-checked like every other figure.
func statsByAddress(plan *session.Plan) (map[signing.Address]types.InferenceStats, error) {
	out := make(map[signing.Address]types.InferenceStats)
	for _, sp := range plan.Slots {
		s := out[sp.Address]
		if st := sp.Stats; st != nil {
			err := addStats(&s, types.InferenceStats{
				Finished: st.Finished, Missed: st.Missed, Invalidated: st.Invalid,
				Validated: st.Validated, ValidationsDone: st.ValidationsDone,
			})
			if err != nil {
				return nil, fmt.Errorf("summing the slots of %s: %w", sdk.AccAddress(sp.Address[:]), err)
			}
		}
		out[sp.Address] = s
	}
	return out, nil
}

func addU64(a, b uint64) (uint64, bool) {
	s := a + b
	return s, s >= a
}

// addStats adds s to into, failing on overflow; into is unchanged then.
func addStats(into *types.InferenceStats, s types.InferenceStats) error {
	sum := *into
	fields := []struct {
		name string
		to   *uint64
		v    uint64
	}{
		{"finished", &sum.Finished, s.Finished}, {"missed", &sum.Missed, s.Missed}, {"invalidated", &sum.Invalidated, s.Invalidated},
		{"validated", &sum.Validated, s.Validated}, {"validations_done", &sum.ValidationsDone, s.ValidationsDone},
	}
	for _, f := range fields {
		v, ok := addU64(*f.to, f.v)
		if !ok {
			return types.ErrOverflow.Wrapf("inference stats overflow: %s %d + %d exceeds uint64", f.name, *f.to, f.v)
		}
		*f.to = v
	}
	*into = sum
	return nil
}
