package keeper

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cosmos/cosmos-sdk/types/query"

	"github.com/devshard/devshard/x/pagination"
	"github.com/devshard/devshard/x/scheduler/types"
)

type queryServer struct{ k Keeper }

// NewQueryServer returns the Query service.
func NewQueryServer(k Keeper) types.QueryServer { return queryServer{k} }

func (q queryServer) Params(ctx context.Context, _ *types.QueryParamsRequest) (*types.QueryParamsResponse, error) {
	p, err := q.k.Params.Get(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &types.QueryParamsResponse{Params: p}, nil
}

func (q queryServer) Task(ctx context.Context, req *types.QueryTaskRequest) (*types.QueryTaskResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	task, failed, err := q.k.Task(ctx, req.Id)
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	return &types.QueryTaskResponse{Task: task, Failed: failed}, nil
}

func (q queryServer) Tasks(ctx context.Context, req *types.QueryTasksRequest) (*types.QueryTasksResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	tasks, page, err := query.CollectionPaginate(ctx, q.k.Tasks, req.Pagination,
		func(_ uint64, t types.Task) (types.Task, error) { return t, nil })
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &types.QueryTasksResponse{Tasks: tasks, Pagination: page}, nil
}

func (q queryServer) TasksByType(ctx context.Context, req *types.QueryTasksByTypeRequest) (*types.QueryTasksResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	ids, page, err := pagination.ByIndex(ctx, q.k.Tasks.Indexes.Type, req.Type, req.Pagination)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return q.tasks(ctx, ids, page)
}

func (q queryServer) TasksByDueHeight(ctx context.Context, req *types.QueryTasksByDueHeightRequest) (*types.QueryTasksResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	ids, page, err := pagination.ByIndex(ctx, q.k.Tasks.Indexes.Due, req.Height, req.Pagination)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return q.tasks(ctx, ids, page)
}

func (q queryServer) tasks(ctx context.Context, ids []uint64, page *query.PageResponse) (*types.QueryTasksResponse, error) {
	res := &types.QueryTasksResponse{Tasks: make([]types.Task, 0, len(ids)), Pagination: page}
	for _, id := range ids {
		t, err := q.k.Tasks.Get(ctx, id)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		res.Tasks = append(res.Tasks, t)
	}
	return res, nil
}

func (q queryServer) FailedTasks(ctx context.Context, req *types.QueryFailedTasksRequest) (*types.QueryTasksResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	tasks, page, err := query.CollectionPaginate(ctx, q.k.Failed, req.Pagination,
		func(_ uint64, t types.Task) (types.Task, error) { return t, nil })
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &types.QueryTasksResponse{Tasks: tasks, Pagination: page}, nil
}

func (q queryServer) TaskTypes(context.Context, *types.QueryTaskTypesRequest) (*types.QueryTaskTypesResponse, error) {
	return &types.QueryTaskTypesResponse{Types: q.k.TaskTypes()}, nil
}
