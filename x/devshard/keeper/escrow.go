package keeper

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/big"

	"cosmossdk.io/collections"
	errorsmod "cosmossdk.io/errors"

	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/x/devshard/types"
)

// moduleAddress is the devshard module account: it holds collateral, open
// escrows, ledgers and unclaimed rewards.
var moduleAddress = authtypes.NewModuleAddress(types.ModuleName)

// CreateEscrow locks amount from creator for a session in the current epoch,
// which must be ACTIVE, under runtimeVersion, which must be approved
// (Params.CheckRuntimeVersion). It picks the group and snapshots every
// session parameter and the runtime version; it charges nothing beyond
// amount (fees are paid out of it at settlement).
func (k Keeper) CreateEscrow(ctx sdk.Context, creator sdk.AccAddress, amount uint64, runtimeVersion string) (types.Escrow, error) {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return types.Escrow{}, err
	}
	if err := params.CheckRuntimeVersion(runtimeVersion); err != nil {
		return types.Escrow{}, err
	}
	if amount < params.MinEscrowAmount || amount > params.MaxEscrowAmount {
		return types.Escrow{}, types.ErrInvalidEscrow.Wrapf("amount %d%s is outside the allowed range [%d, %d]",
			amount, params.MinCollateral.Denom, params.MinEscrowAmount, params.MaxEscrowAmount)
	}
	epochID, err := k.currentEpochID(ctx)
	if err != nil {
		return types.Escrow{}, err
	}
	epoch, err := k.Epoch(ctx, epochID)
	if err != nil {
		return types.Escrow{}, err
	}
	if epoch.State != types.EpochActive {
		return types.Escrow{}, types.ErrEpochNotActive.Wrapf("escrows are created only while the current epoch is ACTIVE; epoch %d is %s", epochID, epoch.State.Short())
	}
	count, err := k.EscrowCount.Get(ctx, epochID)
	if err != nil && !errors.Is(err, collections.ErrNotFound) {
		return types.Escrow{}, err
	}
	if count >= params.MaxEscrowsPerEpoch {
		return types.Escrow{}, types.ErrEscrowLimit.Wrapf("epoch %d already has %d escrows, the most max_escrows_per_epoch allows; retry in the next epoch", epochID, count)
	}
	id, err := k.EscrowSeq.Next(ctx)
	if err != nil {
		return types.Escrow{}, err
	}
	id++ // escrow ids start at 1
	group, err := k.pickGroup(ctx, epochID, id, params.GroupSize)
	if err != nil {
		return types.Escrow{}, err
	}
	snap := sessionpb.EscrowSnapshot{
		ChainId:                 ctx.ChainID(), // every session signature names it
		EscrowId:                id,
		Creator:                 creator,
		Amount:                  amount,
		Epoch:                   epochID,
		Group:                   group,
		TokenPrice:              params.TokenPrice,
		CreationFee:             params.CreationFee,
		FeePerNonce:             params.FeePerNonce,
		MaxNonce:                params.MaxNonce,
		SealGraceNonces:         params.SealGraceNonces,
		SealGraceSeconds:        params.SealGraceSeconds,
		ExecutionTimeoutSeconds: params.ExecutionTimeoutSeconds,
		ValidationRateBps:       params.ValidationRateBps,
		ProtocolVersion:         params.ProtocolVersion,
		RuntimeVersion:          runtimeVersion,
	}
	if err := session.ValidateSnapshot(&snap); err != nil {
		return types.Escrow{}, types.ErrInvalidEscrow.Wrap(err.Error())
	}
	esc := types.Escrow{
		Id:            id,
		Creator:       creator.String(),
		Denom:         params.MinCollateral.Denom,
		Snapshot:      snap,
		Status:        types.EscrowOpen,
		CreatedHeight: ctx.BlockHeight(),
		DeadlineEpoch: epochID + uint64(params.SettlementWindowEpochs),
		ExpiryEpoch:   epochID + uint64(params.ExpiryEpochs),
	}
	if err := k.bank.SendCoinsFromAccountToModule(ctx, creator, types.ModuleName, esc.Coins(amount)); err != nil {
		return types.Escrow{}, errorsmod.Wrapf(err, "locking escrow amount %d%s from %s", amount, esc.Denom, creator) // keeps the bank's code
	}
	if err := k.EscrowCount.Set(ctx, epochID, count+1); err != nil {
		return types.Escrow{}, err
	}
	if err := k.Escrows.Set(ctx, id, esc); err != nil {
		return types.Escrow{}, err
	}
	if err := k.EscrowExpiry.Set(ctx, collections.Join(esc.ExpiryEpoch, id)); err != nil {
		return types.Escrow{}, err
	}
	members := make([]string, len(group))
	for i, a := range group {
		members[i] = sdk.AccAddress(a).String()
	}
	return esc, ctx.EventManager().EmitTypedEvent(&types.EventEscrowCreated{
		EscrowId: id, Creator: esc.Creator, Amount: amount, EpochId: epochID, Group: members,
	})
}

// pickGroup draws size slots from the epoch's members that are still ACTIVE,
// each slot independently with probability proportional to weight, so a
// participant may hold several. The seed is the block's header hash and
// height with the epoch and escrow id: every validator draws the same group.
func (k Keeper) pickGroup(ctx sdk.Context, epochID, escrowID uint64, size uint32) ([][]byte, error) {
	type weighted struct {
		addr sdk.AccAddress
		upTo *big.Int // cumulative weight through this member
	}
	var (
		pool  []weighted
		total = new(big.Int)
	)
	err := k.Members.Walk(ctx, collections.NewPrefixedPairRange[uint64, sdk.AccAddress](epochID),
		func(key collections.Pair[uint64, sdk.AccAddress], m types.EpochMember) (bool, error) {
			p, err := k.Participants.Get(ctx, key.K2())
			if err != nil {
				return true, err
			}
			if p.Status != types.ParticipantActive || !m.Weight.IsPositive() {
				return false, nil
			}
			total.Add(total, m.Weight.BigInt())
			pool = append(pool, weighted{addr: key.K2(), upTo: new(big.Int).Set(total)})
			return false, nil
		})
	if err != nil {
		return nil, err
	}
	if len(pool) == 0 {
		return nil, types.ErrNoGroup.Wrapf("epoch %d has no ACTIVE member with positive weight", epochID)
	}
	seed := sha256.New()
	seed.Write([]byte("devshard/group/v1"))
	seed.Write(ctx.HeaderHash())
	seed.Write(binary.BigEndian.AppendUint64(nil, uint64(ctx.BlockHeight())))
	seed.Write(binary.BigEndian.AppendUint64(nil, epochID))
	seed.Write(binary.BigEndian.AppendUint64(nil, escrowID))
	base := seed.Sum(nil)

	group := make([][]byte, size)
	for slot := range size {
		h := sha256.Sum256(binary.BigEndian.AppendUint32(append([]byte(nil), base...), slot))
		r := new(big.Int).Mod(new(big.Int).SetBytes(h[:]), total)
		lo, hi := 0, len(pool)-1 // first member whose cumulative weight exceeds r
		for lo < hi {
			mid := (lo + hi) / 2
			if pool[mid].upTo.Cmp(r) > 0 {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		group[slot] = append([]byte(nil), pool[lo].addr...)
	}
	return group, nil
}

// Escrow returns one escrow.
func (k Keeper) Escrow(ctx context.Context, id uint64) (types.Escrow, error) {
	e, err := k.Escrows.Get(ctx, id)
	if errors.Is(err, collections.ErrNotFound) {
		return e, types.ErrEscrowNotFound.Wrapf("escrow %d does not exist", id)
	}
	return e, err
}

// ExpireEscrows refunds, in full, at most params.expiry_batch OPEN escrows
// whose expiry epoch has begun, oldest expiry first. It runs at every block's
// end, so a burst of expiries is spread over blocks instead of blowing up one.
func (k Keeper) ExpireEscrows(ctx sdk.Context) error {
	params, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	cur, err := k.CurrentEpoch.Get(ctx)
	if errors.Is(err, collections.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var due []uint64
	err = k.EscrowExpiry.Walk(ctx, collections.NewPrefixUntilPairRange[uint64, uint64](cur),
		func(key collections.Pair[uint64, uint64]) (bool, error) {
			due = append(due, key.K2())
			return len(due) >= int(params.ExpiryBatch), nil
		})
	if err != nil {
		return err
	}
	// Each refund commits on its own: one that fails is logged and retried
	// next block, and never halts the chain or blocks the others.
	for _, id := range due {
		branch, commit := ctx.CacheContext()
		if err := k.expire(branch, id); err != nil {
			ctx.Logger().Error("expiring escrow failed; retrying next block", "escrow", id, "err", err)
			continue
		}
		commit()
	}
	return nil
}

func (k Keeper) expire(ctx sdk.Context, id uint64) error {
	esc, err := k.Escrow(ctx, id)
	if err != nil {
		return err
	}
	creator, err := k.addressCodec.StringToBytes(esc.Creator)
	if err != nil {
		return err
	}
	if err := k.bank.SendCoinsFromModuleToAccount(ctx, types.ModuleName, creator, esc.Coins(esc.Snapshot.Amount)); err != nil {
		return err
	}
	if err := k.EscrowExpiry.Remove(ctx, collections.Join(esc.ExpiryEpoch, id)); err != nil {
		return err
	}
	esc.Status = types.EscrowExpired
	if err := k.Escrows.Set(ctx, id, esc); err != nil {
		return err
	}
	return ctx.EventManager().EmitTypedEvent(&types.EventEscrowExpired{EscrowId: id, Creator: esc.Creator, Amount: esc.Snapshot.Amount})
}
