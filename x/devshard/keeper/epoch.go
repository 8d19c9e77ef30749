package keeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"cosmossdk.io/collections"
	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/fsm"
	"github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// transition is what an epoch action works on.
type transition struct {
	ctx   sdk.Context
	k     Keeper
	epoch *types.Epoch
	// members are the participants to make effective (activate only).
	members []candidate
	reason  string
}

type row = fsm.Transition[types.EpochState, types.Symbol, *transition]

// EpochTable is the epoch lifecycle. Every move to a new state tells the
// hooks; activation also fixes the members, cancellation unschedules what is
// left of the epoch. The guards (which symbol a task feeds) live in the task
// handlers below and are listed in docs/chain.md.
var EpochTable = fsm.MustNew([]types.EpochState{types.EpochClosed, types.EpochCancelled},
	row{From: types.EpochPlanned, On: types.SymActivate, To: types.EpochActive, Action: activate},
	row{From: types.EpochActive, On: types.SymSettle, To: types.EpochSettling, Action: notify},
	row{From: types.EpochSettling, On: types.SymAccount, To: types.EpochAccounting, Action: account},
	row{From: types.EpochAccounting, On: types.SymOpenClaims, To: types.EpochClaimable, Action: notify},
	row{From: types.EpochClaimable, On: types.SymClose, To: types.EpochClosed, Action: closeEpoch},
	row{From: types.EpochPlanned, On: types.SymCancel, To: types.EpochCancelled, Action: cancel},
	row{From: types.EpochActive, On: types.SymCancel, To: types.EpochCancelled, Action: cancel},
	row{From: types.EpochSettling, On: types.SymCancel, To: types.EpochCancelled, Action: cancel},
	row{From: types.EpochAccounting, On: types.SymCancel, To: types.EpochCancelled, Action: cancel},
	row{From: types.EpochClaimable, On: types.SymCancel, To: types.EpochCancelled, Action: cancel},
)

func notify(t *transition, from, to types.EpochState) error {
	if h := t.k.hooks.hooks; h != nil {
		return h.OnEpochTransition(t.ctx, *t.epoch, from, to)
	}
	return nil
}

func activate(t *transition, from, to types.EpochState) error {
	if err := t.k.makeEffective(t.ctx, t.epoch, t.members); err != nil {
		return err
	}
	return notify(t, from, to)
}

func account(t *transition, from, to types.EpochState) error {
	if err := t.k.accountEpoch(t.ctx, *t.epoch); err != nil {
		return err
	}
	return notify(t, from, to)
}

func closeEpoch(t *transition, from, to types.EpochState) error {
	if err := t.k.sweepUnclaimed(t.ctx, t.epoch.Id); err != nil {
		return err
	}
	return notify(t, from, to)
}

func cancel(t *transition, from, to types.EpochState) error {
	if err := t.k.payOutCancelled(t.ctx, *t.epoch); err != nil {
		return err
	}
	// The begin task (first id) stays: the cancelled epoch's window still
	// passes, and its start still advances the current epoch and plans the
	// next one. The other transitions must not run.
	if len(t.epoch.TaskIds) > 1 {
		if err := t.k.scheduler.Unschedule(t.ctx, t.epoch.TaskIds[1:]...); err != nil {
			return err
		}
	}
	t.epoch.CancelReason = t.reason
	return notify(t, from, to)
}

// fire moves epoch by sym and stores it. The action runs in a branch of the
// state committed only on success, so a failed transition leaves no trace.
// Reaching a final state may free collateral of participants that left.
func (k Keeper) fire(ctx sdk.Context, epoch types.Epoch, sym types.Symbol, members []candidate, reason string) error {
	branch, commit := ctx.CacheContext()
	next := epoch
	next.TaskIds = append([]uint64(nil), epoch.TaskIds...)
	env := &transition{ctx: branch, k: k, epoch: &next, members: members, reason: reason}
	to, err := EpochTable.Fire(env, epoch.State, sym)
	if err != nil {
		var te *fsm.TransitionError
		if errors.As(err, &te) {
			return types.ErrIllegalTransition.Wrapf("epoch %d: %v", epoch.Id, err)
		}
		return fmt.Errorf("epoch %d: %w", epoch.Id, err)
	}
	next.State = to
	next.History = append(next.History, types.StateChange{State: to, Height: ctx.BlockHeight()})
	if err := k.Epochs.Set(branch, next.Id, next); err != nil {
		return err
	}
	if err := branch.EventManager().EmitTypedEvent(&types.EventEpochTransition{
		EpochId: next.Id, From: epoch.State, To: to, Height: ctx.BlockHeight(),
	}); err != nil {
		return err
	}
	if to.IsFinal() {
		if err := k.releaseUnbonded(branch); err != nil {
			return err
		}
	}
	commit()
	return nil
}

// planEpoch records epoch id as PLANNED from start and schedules all five of
// its transitions at once: the scheduler takes all or none, so no epoch is
// ever left half-scheduled. Heights use the params in force now; later
// changes apply to epochs planned later. An epoch never starts in the past:
// if its predecessor began so late (retries) that start has passed, it
// starts now.
func (k Keeper) planEpoch(ctx sdk.Context, id uint64, start int64) error {
	p, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	start = max(start, ctx.BlockHeight())
	e := types.Epoch{
		Id:          id,
		State:       types.EpochPlanned,
		StartHeight: start,
		EndHeight:   start + p.EpochLength,
		TotalWeight: sdkmath.ZeroInt(),
		History:     []types.StateChange{{State: types.EpochPlanned, Height: ctx.BlockHeight()}},
	}
	e.AccountingHeight = e.EndHeight + int64(p.SettlingEpochs)*p.EpochLength
	e.ClaimableHeight = e.AccountingHeight + int64(p.AccountingEpochs)*p.EpochLength
	e.CloseHeight = e.ClaimableHeight + int64(p.ClaimableEpochs)*p.EpochLength

	payload := binary.BigEndian.AppendUint64(nil, id)
	ids, err := k.scheduler.Schedule(ctx,
		schedulertypes.NewTask{Type: types.TaskEpochBegin, DueHeight: e.StartHeight, Payload: payload},
		schedulertypes.NewTask{Type: types.TaskEpochSettle, DueHeight: e.EndHeight, Payload: payload},
		schedulertypes.NewTask{Type: types.TaskEpochAccount, DueHeight: e.AccountingHeight, Payload: payload},
		schedulertypes.NewTask{Type: types.TaskEpochClaimable, DueHeight: e.ClaimableHeight, Payload: payload},
		schedulertypes.NewTask{Type: types.TaskEpochClose, DueHeight: e.CloseHeight, Payload: payload},
	)
	if err != nil {
		return fmt.Errorf("planning epoch %d: %w", id, err)
	}
	e.TaskIds = ids
	if err := k.Epochs.Set(ctx, id, e); err != nil {
		return err
	}
	return ctx.EventManager().EmitTypedEvent(&types.EventEpochTransition{
		EpochId: id, To: types.EpochPlanned, Height: ctx.BlockHeight(),
	})
}

// TaskDefinitions are the scheduler task types of the epoch lifecycle, and
// the close of a settlement's challenge window (no order to keep: a payout
// routes by whatever state its epoch is in). Their
// dependencies order same-block transitions: an epoch's active phase closes
// (settle) and the previous ones move on (account) before the next epoch
// begins, and an epoch is accounted before it opens claims, which happens
// before it closes.
func (k Keeper) TaskDefinitions() []schedulertypes.TaskDefinition {
	return []schedulertypes.TaskDefinition{
		{Name: types.TaskEpochSettle, Handler: k.onEpoch(types.SymSettle)},
		{Name: types.TaskEpochAccount, DependsOn: []string{types.TaskEpochSettle}, Handler: k.onEpoch(types.SymAccount)},
		{Name: types.TaskEpochClaimable, DependsOn: []string{types.TaskEpochAccount}, Handler: k.onEpoch(types.SymOpenClaims)},
		{Name: types.TaskEpochClose, DependsOn: []string{types.TaskEpochClaimable}, Handler: k.onEpoch(types.SymClose)},
		{Name: types.TaskEpochBegin, DependsOn: []string{types.TaskEpochSettle, types.TaskEpochAccount}, Handler: k.beginTask},
		{Name: types.TaskSettlementWindow, Handler: k.closeSettlementWindow},
	}
}

func (k Keeper) onEpoch(sym types.Symbol) schedulertypes.Handler {
	return func(ctx context.Context, task schedulertypes.Task) error {
		epoch, err := k.taskEpoch(ctx, task)
		if err != nil {
			return err
		}
		return k.fire(sdk.UnwrapSDKContext(ctx), epoch, sym, nil, "")
	}
}

func (k Keeper) beginTask(ctx context.Context, task schedulertypes.Task) error {
	epoch, err := k.taskEpoch(ctx, task)
	if err != nil {
		return err
	}
	return k.BeginEpoch(sdk.UnwrapSDKContext(ctx), epoch)
}

func (k Keeper) taskEpoch(ctx context.Context, task schedulertypes.Task) (types.Epoch, error) {
	if len(task.Payload) != 8 {
		return types.Epoch{}, fmt.Errorf("task %d (%s) has a %d-byte payload; want the 8-byte epoch id", task.Id, task.Type, len(task.Payload))
	}
	return k.Epoch(ctx, binary.BigEndian.Uint64(task.Payload))
}

// BeginEpoch runs at an epoch's start height. The window now belongs to
// epoch, so it becomes the current epoch and the next one is planned, even
// if this one never activates. Guard: an epoch with no effective
// participants is cancelled instead of activated.
func (k Keeper) BeginEpoch(ctx sdk.Context, epoch types.Epoch) error {
	if err := k.CurrentEpoch.Set(ctx, epoch.Id); err != nil {
		return err
	}
	if has, err := k.Epochs.Has(ctx, epoch.Id+1); err != nil {
		return err
	} else if !has {
		if err := k.planEpoch(ctx, epoch.Id+1, epoch.EndHeight); err != nil {
			return err
		}
	}
	if epoch.State != types.EpochPlanned {
		return nil // cancelled by governance before it began
	}
	members, err := k.selectMembers(ctx, epoch.Id)
	if err != nil {
		return err
	}
	if len(members) == 0 {
		return k.fire(ctx, epoch, types.SymCancel, nil, "no effective participants")
	}
	return k.fire(ctx, epoch, types.SymActivate, members, "")
}

// CancelEpoch cancels an epoch that is not final.
func (k Keeper) CancelEpoch(ctx sdk.Context, id uint64, reason string) error {
	epoch, err := k.Epoch(ctx, id)
	if err != nil {
		return err
	}
	return k.fire(ctx, epoch, types.SymCancel, nil, reason)
}

// Epoch returns one epoch.
func (k Keeper) Epoch(ctx context.Context, id uint64) (types.Epoch, error) {
	e, err := k.Epochs.Get(ctx, id)
	if errors.Is(err, collections.ErrNotFound) {
		return e, types.ErrEpochNotFound.Wrapf("epoch %d does not exist", id)
	}
	return e, err
}

// oldestOpenEpoch is the lowest id of an epoch not yet final, or MaxUint64
// when every epoch is final.
func (k Keeper) oldestOpenEpoch(ctx context.Context) (uint64, error) {
	oldest := ^uint64(0)
	for _, s := range types.EpochStates {
		if s.IsFinal() {
			continue
		}
		it, err := k.Epochs.Indexes.State.MatchExact(ctx, int32(s))
		if err != nil {
			return 0, err
		}
		if it.Valid() {
			id, err := it.PrimaryKey()
			if err != nil {
				it.Close()
				return 0, err
			}
			oldest = min(oldest, id)
		}
		it.Close()
	}
	return oldest, nil
}
