package keeper

import (
	"context"
	"errors"
	"fmt"

	"cosmossdk.io/collections"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/scheduler/types"
)

// Schedule adds tasks and returns their ids, in order. It is atomic: either
// every task is scheduled or, on any error, none is and the id sequence does
// not move. A partly scheduled batch (an epoch with an activation but no
// close, say) is exactly what callers must never see.
func (k Keeper) Schedule(ctx context.Context, tasks ...types.NewTask) ([]uint64, error) {
	sdkCtx := sdk.UnwrapSDKContext(ctx)
	height := sdkCtx.BlockHeight()
	for i, t := range tasks {
		if err := k.checkNewTask(t, height); err != nil {
			return nil, fmt.Errorf("task %d of %d not scheduled, nor any other of the batch: %w", i+1, len(tasks), err)
		}
	}

	// Validation above catches every rule; the branch also undoes the writes
	// if the store itself fails halfway.
	branch, commit := sdkCtx.CacheContext()
	ids := make([]uint64, len(tasks))
	for i, t := range tasks {
		id, err := k.NextID.Next(branch)
		if err != nil {
			return nil, err
		}
		task := types.Task{
			Id:              id,
			Type:            t.Type,
			DueHeight:       t.DueHeight,
			Period:          t.Period,
			Payload:         t.Payload,
			ScheduledHeight: height,
		}
		if err := k.Tasks.Set(branch, id, task); err != nil {
			return nil, err
		}
		ids[i] = id
	}
	commit()
	return ids, nil
}

func (k Keeper) checkNewTask(t types.NewTask, height int64) error {
	if _, _, ok := k.registry.lookup(t.Type); !ok {
		return fmt.Errorf("%w: %q is not registered (registered: %s)", types.ErrUnknownTaskType, t.Type, k.typeNames())
	}
	if t.DueHeight < height {
		return fmt.Errorf("%w: %s is due at height %d, which has passed (current height %d)", types.ErrInvalidTask, t.Type, t.DueHeight, height)
	}
	if t.Period < 0 {
		return fmt.Errorf("%w: %s has negative period %d", types.ErrInvalidTask, t.Type, t.Period)
	}
	return nil
}

func (k Keeper) typeNames() string {
	var s string
	for i, t := range k.registry.Types() {
		if i > 0 {
			s += ", "
		}
		s += t.Name
	}
	if s == "" {
		return "none"
	}
	return s
}

// Unschedule removes scheduled tasks. Ids that are not scheduled (they ran,
// or were removed before) are skipped: callers remove "whatever is left".
func (k Keeper) Unschedule(ctx context.Context, ids ...uint64) error {
	for _, id := range ids {
		if err := k.Tasks.Remove(ctx, id); err != nil && !errors.Is(err, collections.ErrNotFound) {
			return err
		}
	}
	return nil
}

// Task returns a scheduled or failed task; failed reports which.
func (k Keeper) Task(ctx context.Context, id uint64) (task types.Task, failed bool, err error) {
	task, err = k.Tasks.Get(ctx, id)
	if err == nil {
		return task, false, nil
	}
	if !errors.Is(err, collections.ErrNotFound) {
		return task, false, err
	}
	task, err = k.Failed.Get(ctx, id)
	if errors.Is(err, collections.ErrNotFound) {
		return task, false, fmt.Errorf("%w: no scheduled or failed task has id %d", types.ErrTaskNotFound, id)
	}
	return task, err == nil, err
}
