package keeper

import (
	"context"
	"errors"
	"fmt"

	"cosmossdk.io/collections"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/scheduler/types"
)

type msgServer struct{ k Keeper }

// NewMsgServer returns the Msg service: governance-only messages.
func NewMsgServer(k Keeper) types.MsgServer { return msgServer{k} }

func (s msgServer) checkAuthority(signer string) error {
	if signer != s.k.authority {
		return fmt.Errorf("%w: only the governance account %s may send this message, not %s", types.ErrInvalidAuthority, s.k.authority, signer)
	}
	return nil
}

func (s msgServer) UpdateParams(ctx context.Context, msg *types.MsgUpdateParams) (*types.MsgUpdateParamsResponse, error) {
	if err := s.checkAuthority(msg.Authority); err != nil {
		return nil, err
	}
	if err := msg.Params.Validate(); err != nil {
		return nil, err
	}
	return &types.MsgUpdateParamsResponse{}, s.k.Params.Set(ctx, msg.Params)
}

func (s msgServer) RetryFailedTask(ctx context.Context, msg *types.MsgRetryFailedTask) (*types.MsgRetryFailedTaskResponse, error) {
	if err := s.checkAuthority(msg.Authority); err != nil {
		return nil, err
	}
	task, err := s.failedTask(ctx, msg.Id)
	if err != nil {
		return nil, err
	}
	sdkCtx := sdk.UnwrapSDKContext(ctx)
	// Due now: it runs at this block's end, or the next one's if the
	// scheduler's end blocker ran before the message (gov proposals execute
	// in gov's end blocker).
	task.DueHeight = sdkCtx.BlockHeight()
	task.Attempts = 0
	task.FailedHeight = 0
	if err := s.k.Failed.Remove(ctx, task.Id); err != nil {
		return nil, err
	}
	if err := s.k.Tasks.Set(ctx, task.Id, task); err != nil {
		return nil, err
	}
	return &types.MsgRetryFailedTaskResponse{}, sdkCtx.EventManager().EmitTypedEvent(&types.EventFailedTaskRequeued{
		Id: task.Id, Type: task.Type, DueHeight: task.DueHeight,
	})
}

func (s msgServer) DropFailedTask(ctx context.Context, msg *types.MsgDropFailedTask) (*types.MsgDropFailedTaskResponse, error) {
	if err := s.checkAuthority(msg.Authority); err != nil {
		return nil, err
	}
	task, err := s.failedTask(ctx, msg.Id)
	if err != nil {
		return nil, err
	}
	if err := s.k.Failed.Remove(ctx, task.Id); err != nil {
		return nil, err
	}
	return &types.MsgDropFailedTaskResponse{}, sdk.UnwrapSDKContext(ctx).EventManager().EmitTypedEvent(&types.EventFailedTaskDropped{
		Id: task.Id, Type: task.Type,
	})
}

func (s msgServer) failedTask(ctx context.Context, id uint64) (types.Task, error) {
	task, err := s.k.Failed.Get(ctx, id)
	if errors.Is(err, collections.ErrNotFound) {
		return task, fmt.Errorf("%w: task %d is not in the failed set (query failed-tasks to list it)", types.ErrTaskNotFound, id)
	}
	return task, err
}
