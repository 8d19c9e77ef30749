package keeper

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"

	"cosmossdk.io/collections"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/scheduler/types"
)

// maxErrorLen bounds the handler error kept in state.
const maxErrorLen = 512

type dueTask struct {
	id   uint64
	rank uint32
	due  int64
}

// RunDue runs every task due at or before the current height, ordered by
// their types' dependencies, then due height, then id. It is the module's
// EndBlock. A handler's error or panic never escapes: the task is retried or
// moved to the failed set. Only a failure of the store itself is returned.
//
// Tasks scheduled by a handler for the current height run at the next block's
// end, since the due set is read once, before the first task runs.
func (k Keeper) RunDue(ctx context.Context) error {
	sdkCtx := sdk.UnwrapSDKContext(ctx)
	due, err := k.dueTasks(ctx, sdkCtx.BlockHeight())
	if err != nil || len(due) == 0 {
		return err
	}
	params, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	for _, d := range due {
		if err := k.runOne(sdkCtx, params, d.id); err != nil {
			return err
		}
	}
	return nil
}

// dueTasks reads the due index up to height; the range stops there, so tasks
// due later are never touched.
func (k Keeper) dueTasks(ctx context.Context, height int64) ([]dueTask, error) {
	it, err := k.Tasks.Indexes.Due.Iterate(ctx, collections.NewPrefixUntilPairRange[int64, uint64](height))
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var due []dueTask
	for ; it.Valid(); it.Next() {
		key, err := it.FullKey()
		if err != nil {
			return nil, err
		}
		task, err := k.Tasks.Get(ctx, key.K2())
		if err != nil {
			return nil, err
		}
		rank := uint32(math.MaxUint32) // an unregistered type runs last, and fails
		if _, r, ok := k.registry.lookup(task.Type); ok {
			rank = r
		}
		due = append(due, dueTask{id: task.Id, rank: rank, due: task.DueHeight})
	}
	slices.SortFunc(due, func(a, b dueTask) int {
		switch {
		case a.rank != b.rank:
			return cmpOrder(a.rank, b.rank)
		case a.due != b.due:
			return cmpOrder(a.due, b.due)
		default:
			return cmpOrder(a.id, b.id)
		}
	})
	return due, nil
}

func cmpOrder[T int64 | uint64 | uint32](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (k Keeper) runOne(ctx sdk.Context, params types.Params, id uint64) error {
	// An earlier task of this block may have unscheduled this one.
	task, err := k.Tasks.Get(ctx, id)
	if errors.Is(err, collections.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if runErr := k.call(ctx, task); runErr != nil {
		return k.retryOrFail(ctx, params, task, runErr)
	}
	return k.completed(ctx, id)
}

// call runs the handler in a branch of the state, committed only on success.
// A panic is an error like any other: the chain must not halt on a handler.
func (k Keeper) call(ctx sdk.Context, task types.Task) (err error) {
	def, _, ok := k.registry.lookup(task.Type)
	if !ok {
		return fmt.Errorf("no handler is registered for task type %q", task.Type)
	}
	branch, commit := ctx.CacheContext()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	if err := def.Handler(branch, task); err != nil {
		return err
	}
	commit()
	return nil
}

// completed removes a one-shot task or moves a periodic one to its next due
// height. The handler may have changed or removed its own task, so it is read
// again.
func (k Keeper) completed(ctx sdk.Context, id uint64) error {
	task, err := k.Tasks.Get(ctx, id)
	if errors.Is(err, collections.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if task.Period == 0 {
		return k.Tasks.Remove(ctx, id)
	}
	// Anchored to the due height so the period does not drift; periods
	// missed while the task was retrying are skipped, not run back to back.
	next := task.DueHeight + task.Period
	if height := ctx.BlockHeight(); next <= height {
		next = height + task.Period - (height-task.DueHeight)%task.Period
	}
	task.DueHeight = next
	task.Attempts = 0
	task.LastError = ""
	return k.Tasks.Set(ctx, id, task)
}

func (k Keeper) retryOrFail(ctx sdk.Context, params types.Params, task types.Task, runErr error) error {
	height := ctx.BlockHeight()
	task.Attempts++
	task.LastError = truncate(runErr.Error(), maxErrorLen)
	if task.Attempts > params.MaxRetries {
		task.FailedHeight = height
		if err := k.Tasks.Remove(ctx, task.Id); err != nil {
			return err
		}
		if err := k.Failed.Set(ctx, task.Id, task); err != nil {
			return err
		}
		ctx.Logger().Error("scheduled task failed for good; governance can retry or drop it",
			"module", types.ModuleName, "id", task.Id, "type", task.Type, "attempts", task.Attempts, "err", runErr)
		return ctx.EventManager().EmitTypedEvent(&types.EventTaskFailed{
			Id: task.Id, Type: task.Type, Attempts: task.Attempts, Error: task.LastError,
		})
	}
	task.DueHeight = height + params.RetryDelay
	if err := k.Tasks.Set(ctx, task.Id, task); err != nil {
		return err
	}
	ctx.Logger().Info("scheduled task failed; retrying",
		"module", types.ModuleName, "id", task.Id, "type", task.Type, "attempt", task.Attempts, "next_height", task.DueHeight, "err", runErr)
	return ctx.EventManager().EmitTypedEvent(&types.EventTaskRetry{
		Id: task.Id, Type: task.Type, Attempt: task.Attempts, NextHeight: task.DueHeight, Error: task.LastError,
	})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut at a character boundary, so state holds valid UTF-8.
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
