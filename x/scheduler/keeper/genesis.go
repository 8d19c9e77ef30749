package keeper

import (
	"context"
	"fmt"

	"github.com/devshard/devshard/x/scheduler/types"
)

// InitGenesis loads the state. Every task's type must be registered: a task
// that no code can run is a wiring mistake to catch before the first block.
func (k Keeper) InitGenesis(ctx context.Context, gs types.GenesisState) error {
	if err := gs.Validate(); err != nil {
		return err
	}
	if err := k.Params.Set(ctx, gs.Params); err != nil {
		return err
	}
	next := max(gs.NextId, 1) // id 0 is never used, so it can mean "none"
	if err := k.NextID.Set(ctx, next); err != nil {
		return err
	}
	for _, t := range gs.Tasks {
		if _, _, ok := k.registry.lookup(t.Type); !ok {
			return fmt.Errorf("%w: genesis task %d has type %q, which this binary does not register", types.ErrInvalidGenesis, t.Id, t.Type)
		}
		if err := k.Tasks.Set(ctx, t.Id, t); err != nil {
			return err
		}
	}
	for _, t := range gs.Failed {
		if err := k.Failed.Set(ctx, t.Id, t); err != nil {
			return err
		}
	}
	return nil
}

// ExportGenesis dumps the state.
func (k Keeper) ExportGenesis(ctx context.Context) (*types.GenesisState, error) {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return nil, err
	}
	next, err := k.NextID.Peek(ctx)
	if err != nil {
		return nil, err
	}
	gs := &types.GenesisState{Params: params, NextId: next}
	if err := k.Tasks.Walk(ctx, nil, func(_ uint64, t types.Task) (bool, error) {
		gs.Tasks = append(gs.Tasks, t)
		return false, nil
	}); err != nil {
		return nil, err
	}
	if err := k.Failed.Walk(ctx, nil, func(_ uint64, t types.Task) (bool, error) {
		gs.Failed = append(gs.Failed, t)
		return false, nil
	}); err != nil {
		return nil, err
	}
	return gs, nil
}
