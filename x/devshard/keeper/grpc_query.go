package keeper

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"cosmossdk.io/collections"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/query"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/x/devshard/types"
	"github.com/devshard/devshard/x/pagination"
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

func (q queryServer) Epoch(ctx context.Context, req *types.QueryEpochRequest) (*types.QueryEpochResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	e, err := q.k.Epoch(ctx, req.Id)
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	return &types.QueryEpochResponse{Epoch: e}, nil
}

func (q queryServer) CurrentEpoch(ctx context.Context, _ *types.QueryCurrentEpochRequest) (*types.QueryEpochResponse, error) {
	id, err := q.k.CurrentEpoch.Get(ctx)
	if errors.Is(err, collections.ErrNotFound) {
		return nil, status.Error(codes.NotFound, "no epoch has begun yet; epoch 1 begins at the end of the first block")
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return q.Epoch(ctx, &types.QueryEpochRequest{Id: id})
}

func (q queryServer) Epochs(ctx context.Context, req *types.QueryEpochsRequest) (*types.QueryEpochsResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	epochs, page, err := query.CollectionPaginate(ctx, q.k.Epochs, req.Pagination,
		func(_ uint64, e types.Epoch) (types.Epoch, error) { return e, nil })
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &types.QueryEpochsResponse{Epochs: epochs, Pagination: page}, nil
}

func (q queryServer) EpochsByState(ctx context.Context, req *types.QueryEpochsByStateRequest) (*types.QueryEpochsResponse, error) {
	if req == nil || req.State == types.EpochStateUnspecified {
		return nil, status.Error(codes.InvalidArgument, "state is required: one of PLANNED, ACTIVE, SETTLING, ACCOUNTING, CLAIMABLE, CLOSED, CANCELLED")
	}
	ids, page, err := pagination.ByIndex(ctx, q.k.Epochs.Indexes.State, int32(req.State), req.Pagination)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	res := &types.QueryEpochsResponse{Epochs: make([]types.Epoch, 0, len(ids)), Pagination: page}
	for _, id := range ids {
		e, err := q.k.Epochs.Get(ctx, id)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		res.Epochs = append(res.Epochs, e)
	}
	return res, nil
}

func (q queryServer) Participant(ctx context.Context, req *types.QueryParticipantRequest) (*types.QueryParticipantResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	addr, err := q.k.addressCodec.StringToBytes(req.Address)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "address %q: %v", req.Address, err)
	}
	p, err := q.k.participant(ctx, addr)
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	return &types.QueryParticipantResponse{Participant: p}, nil
}

func (q queryServer) Participants(ctx context.Context, req *types.QueryParticipantsRequest) (*types.QueryParticipantsResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	ps, page, err := query.CollectionPaginate(ctx, q.k.Participants, req.Pagination,
		func(_ sdk.AccAddress, p types.Participant) (types.Participant, error) { return p, nil })
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &types.QueryParticipantsResponse{Participants: ps, Pagination: page}, nil
}

func (q queryServer) EpochMembers(ctx context.Context, req *types.QueryEpochMembersRequest) (*types.QueryEpochMembersResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	ms, page, err := query.CollectionPaginate(ctx, q.k.Members, req.Pagination,
		func(_ collections.Pair[uint64, sdk.AccAddress], m types.EpochMember) (types.EpochMember, error) {
			return m, nil
		},
		query.WithCollectionPaginationPairPrefix[uint64, sdk.AccAddress](req.EpochId))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &types.QueryEpochMembersResponse{Members: ms, Pagination: page}, nil
}

func (q queryServer) MayActFor(ctx context.Context, req *types.QueryMayActForRequest) (*types.QueryMayActForResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	holder, err := q.k.addressCodec.StringToBytes(req.Holder)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "holder %q: %v", req.Holder, err)
	}
	signer, err := q.k.addressCodec.StringToBytes(req.Signer)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "signer %q: %v", req.Signer, err)
	}
	kind := session.Kind(req.Kind)
	if _, ok := types.GrantTypeURL(kind); !ok {
		return nil, status.Errorf(codes.InvalidArgument, "kind %q is not a session signature kind (for example %q)", req.Kind, session.KindFinish)
	}
	return &types.QueryMayActForResponse{Allowed: q.k.MayActFor(ctx, holder, signer, kind)}, nil
}

func (q queryServer) Escrow(ctx context.Context, req *types.QueryEscrowRequest) (*types.QueryEscrowResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	e, err := q.k.Escrow(ctx, req.Id)
	if err != nil {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	return &types.QueryEscrowResponse{Escrow: e}, nil
}

func (q queryServer) Summary(ctx context.Context, req *types.QuerySummaryRequest) (*types.QuerySummaryResponse, error) {
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "empty request")
	}
	addr, err := q.k.addressCodec.StringToBytes(req.Address)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "address %q: %v", req.Address, err)
	}
	s, err := q.k.Summaries.Get(ctx, collections.Join(req.EpochId, sdk.AccAddress(addr)))
	if errors.Is(err, collections.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no performance summary for %s in epoch %d (written when the epoch is accounted)", req.Address, req.EpochId)
	} else if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &types.QuerySummaryResponse{Summary: s}, nil
}

func (q queryServer) Conservation(ctx context.Context, _ *types.QueryConservationRequest) (*types.QueryConservationResponse, error) {
	_, res, err := q.k.Conservation(sdk.UnwrapSDKContext(ctx))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &res, nil
}
