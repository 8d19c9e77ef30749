package keeper

import (
	"context"
	"fmt"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/devshard/types"
)

type msgServer struct{ k Keeper }

// NewMsgServer returns the Msg service.
func NewMsgServer(k Keeper) types.MsgServer { return msgServer{k} }

func (s msgServer) address(field, bech string) (sdk.AccAddress, error) {
	b, err := s.k.addressCodec.StringToBytes(bech)
	if err != nil {
		return nil, types.ErrInvalidParticipant.Wrapf("%s %q is not a valid address: %v", field, bech, err)
	}
	return b, nil
}

func (s msgServer) RegisterParticipant(ctx context.Context, msg *types.MsgRegisterParticipant) (*types.MsgRegisterParticipantResponse, error) {
	addr, err := s.address("participant", msg.Participant)
	if err != nil {
		return nil, err
	}
	upcoming, err := s.k.RegisterParticipant(ctx, addr, msg.Url, msg.Collateral)
	if err != nil {
		return nil, err
	}
	return &types.MsgRegisterParticipantResponse{UpcomingEpoch: upcoming}, nil
}

func (s msgServer) UnregisterParticipant(ctx context.Context, msg *types.MsgUnregisterParticipant) (*types.MsgUnregisterParticipantResponse, error) {
	addr, err := s.address("participant", msg.Participant)
	if err != nil {
		return nil, err
	}
	after, err := s.k.UnregisterParticipant(ctx, addr)
	if err != nil {
		return nil, err
	}
	return &types.MsgUnregisterParticipantResponse{UnbondAfterEpoch: after}, nil
}

func (msgServer) SignSession(context.Context, *types.MsgSignSession) (*types.MsgSignSessionResponse, error) {
	return nil, types.ErrNotExecutable.Wrapf(
		"MsgSignSession only exists to be granted: run `tx authz grant <warm-key> generic --msg-type %s` from the participant's account",
		sdk.MsgTypeURL(&types.MsgSignSession{}))
}

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
	if err := s.k.CheckDenomChange(sdk.UnwrapSDKContext(ctx), msg.Params); err != nil {
		return nil, err
	}
	return &types.MsgUpdateParamsResponse{}, s.k.Params.Set(ctx, msg.Params)
}

func (s msgServer) CancelEpoch(ctx context.Context, msg *types.MsgCancelEpoch) (*types.MsgCancelEpochResponse, error) {
	if err := s.checkAuthority(msg.Authority); err != nil {
		return nil, err
	}
	reason := msg.Reason
	if reason == "" {
		reason = "cancelled by governance"
	}
	return &types.MsgCancelEpochResponse{}, s.k.CancelEpoch(sdk.UnwrapSDKContext(ctx), msg.EpochId, reason)
}

func (s msgServer) CreateEscrow(ctx context.Context, msg *types.MsgCreateEscrow) (*types.MsgCreateEscrowResponse, error) {
	creator, err := s.k.addressCodec.StringToBytes(msg.Creator)
	if err != nil {
		return nil, types.ErrInvalidEscrow.Wrapf("creator %q is not a valid address: %v", msg.Creator, err)
	}
	esc, err := s.k.CreateEscrow(sdk.UnwrapSDKContext(ctx), creator, msg.Amount, msg.RuntimeVersion)
	if err != nil {
		return nil, err
	}
	return &types.MsgCreateEscrowResponse{EscrowId: esc.Id, EpochId: esc.Snapshot.Epoch}, nil
}

func (s msgServer) SettleEscrow(ctx context.Context, msg *types.MsgSettleEscrow) (*types.MsgSettleEscrowResponse, error) {
	sender, err := s.k.addressCodec.StringToBytes(msg.Sender)
	if err != nil {
		return nil, types.ErrSettlement.Wrapf("sender %q is not a valid address: %v", msg.Sender, err)
	}
	return s.k.SettleEscrow(sdk.UnwrapSDKContext(ctx), sender, msg.Settlement)
}

func (s msgServer) ClaimRewards(ctx context.Context, msg *types.MsgClaimRewards) (*types.MsgClaimRewardsResponse, error) {
	addr, err := s.address("participant", msg.Participant)
	if err != nil {
		return nil, err
	}
	amount, err := s.k.ClaimRewards(sdk.UnwrapSDKContext(ctx), addr, msg.EpochId)
	if err != nil {
		return nil, err
	}
	return &types.MsgClaimRewardsResponse{Amount: amount}, nil
}
