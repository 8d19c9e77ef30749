// Package keeper holds the devshard module's state: participants, their
// collateral, and the epochs with their lifecycle.
package keeper

import (
	"fmt"

	"cosmossdk.io/collections"
	"cosmossdk.io/collections/indexes"
	"cosmossdk.io/core/address"
	"cosmossdk.io/core/store"

	"github.com/cosmos/cosmos-sdk/codec"
	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/x/devshard/types"
)

// EpochIndexes index epochs by state, so one read lists every epoch in a
// given state.
type EpochIndexes struct {
	State *indexes.Multi[int32, uint64, types.Epoch]
}

// IndexesList implements collections.Indexes.
func (i EpochIndexes) IndexesList() []collections.Index[uint64, types.Epoch] {
	return []collections.Index[uint64, types.Epoch]{i.State}
}

// Keeper is the devshard module's keeper.
type Keeper struct {
	authority    string
	addressCodec address.Codec
	bank         types.BankKeeper
	authz        types.AuthzKeeper
	scheduler    types.SchedulerKeeper
	distr        types.DistributionKeeper
	upgrade      types.UpgradeKeeper
	// hooks is shared by copies of the keeper, so hooks set after the module
	// is built are seen by it.
	hooks *hookSlot
	// sigMemo remembers settlement signatures that verified on this node,
	// in the mempool or in a block, so a block checks a signature its
	// mempool already checked at the cost of a hash. It holds no state:
	// a hit repeats a check that passed, with the same outcome.
	sigMemo *signing.Memo

	Schema collections.Schema
	Params collections.Item[types.Params]
	// CurrentEpoch is the epoch whose window holds the current block: the
	// latest one whose start has passed, activated or not.
	CurrentEpoch collections.Item[uint64]
	Epochs       *collections.IndexedMap[uint64, types.Epoch, EpochIndexes]
	Participants collections.Map[sdk.AccAddress, types.Participant]
	// Members are the participants effective in each epoch, keyed by
	// (epoch, address).
	Members collections.Map[collections.Pair[uint64, sdk.AccAddress], types.EpochMember]
	// Unbonding holds (unbond_after_epoch, address) of participants that
	// left, ordered so release reads only the entries it releases.
	Unbonding collections.KeySet[collections.Pair[uint64, sdk.AccAddress]]

	EscrowSeq collections.Sequence
	Escrows   collections.Map[uint64, types.Escrow]
	// EscrowExpiry holds (expiry_epoch, id) of every OPEN escrow, ordered
	// so expiry reads only the escrows it refunds.
	EscrowExpiry collections.KeySet[collections.Pair[uint64, uint64]]
	// Pending holds the id of every OPEN escrow with a settlement in its
	// challenge window. Such an escrow leaves EscrowExpiry: it is paid when
	// the window closes, never refunded by expiry meanwhile.
	Pending collections.KeySet[uint64]
	// EscrowCount is how many escrows each epoch accepted.
	EscrowCount collections.Map[uint64, uint64]
	// Summaries are the EpochPerformanceSummary of each (epoch, address),
	// written at accounting.
	Summaries collections.Map[collections.Pair[uint64, sdk.AccAddress], types.EpochPerformanceSummary]
	// UpgradeHeights are the heights of the software upgrades seen applied
	// (RecordUpgrade), each the start of an upgrade protection window.
	UpgradeHeights collections.KeySet[int64]
}

// SignatureMemoSize is how many settlement signatures a node remembers: the
// signatures of a full mempool of 16-slot settlements (5,000 txs, one
// signature per distinct host).
const SignatureMemoSize = 1 << 16

type hookSlot struct{ hooks types.EpochHooks }

// NewKeeper returns the keeper. authority (the gov module account) signs the
// governance messages; upgrade is x/upgrade, read for upgrade protection.
func NewKeeper(
	cdc codec.BinaryCodec,
	storeService store.KVStoreService,
	addressCodec address.Codec,
	authority string,
	bank types.BankKeeper,
	authz types.AuthzKeeper,
	scheduler types.SchedulerKeeper,
	distr types.DistributionKeeper,
	upgrade types.UpgradeKeeper,
) Keeper {
	sb := collections.NewSchemaBuilder(storeService)
	k := Keeper{
		authority:    authority,
		addressCodec: addressCodec,
		bank:         bank,
		authz:        authz,
		scheduler:    scheduler,
		distr:        distr,
		upgrade:      upgrade,
		hooks:        &hookSlot{},
		sigMemo:      signing.NewMemo(SignatureMemoSize),
		Params:       collections.NewItem(sb, types.ParamsKey, "params", codec.CollValue[types.Params](cdc)),
		CurrentEpoch: collections.NewItem(sb, types.CurrentEpochKey, "current_epoch", collections.Uint64Value),
		Epochs: collections.NewIndexedMap(sb, types.EpochsKey, "epochs", collections.Uint64Key, codec.CollValue[types.Epoch](cdc), EpochIndexes{
			State: indexes.NewMulti(sb, types.EpochStateIndexKey, "epochs_by_state", collections.Int32Key, collections.Uint64Key,
				func(_ uint64, e types.Epoch) (int32, error) { return int32(e.State), nil }),
		}),
		Participants: collections.NewMap(sb, types.ParticipantsKey, "participants", sdk.AccAddressKey, codec.CollValue[types.Participant](cdc)),
		Members: collections.NewMap(sb, types.MembersKey, "members",
			collections.PairKeyCodec(collections.Uint64Key, sdk.AccAddressKey), codec.CollValue[types.EpochMember](cdc)),
		Unbonding: collections.NewKeySet(sb, types.UnbondingKey, "unbonding",
			collections.PairKeyCodec(collections.Uint64Key, sdk.AccAddressKey)),
		EscrowSeq: collections.NewSequence(sb, types.EscrowSeqKey, "escrow_seq"),
		Escrows:   collections.NewMap(sb, types.EscrowsKey, "escrows", collections.Uint64Key, codec.CollValue[types.Escrow](cdc)),
		EscrowExpiry: collections.NewKeySet(sb, types.EscrowExpiryKey, "escrow_expiry",
			collections.PairKeyCodec(collections.Uint64Key, collections.Uint64Key)),
		Pending:     collections.NewKeySet(sb, types.PendingKey, "pending_settlements", collections.Uint64Key),
		EscrowCount: collections.NewMap(sb, types.EscrowCountKey, "escrow_count", collections.Uint64Key, collections.Uint64Value),
		Summaries: collections.NewMap(sb, types.SummariesKey, "summaries",
			collections.PairKeyCodec(collections.Uint64Key, sdk.AccAddressKey), codec.CollValue[types.EpochPerformanceSummary](cdc)),
		UpgradeHeights: collections.NewKeySet(sb, types.UpgradeHeightsKey, "upgrade_heights", collections.Int64Key),
	}
	schema, err := sb.Build()
	if err != nil {
		panic(err)
	}
	k.Schema = schema
	return k
}

// SetHooks installs the epoch hooks. It may be called once, while wiring.
func (k Keeper) SetHooks(h types.EpochHooks) {
	if k.hooks.hooks != nil {
		panic(fmt.Sprintf("%s: epoch hooks are already set", types.ModuleName))
	}
	k.hooks.hooks = h
}

// Authority is the address that may send the governance messages.
func (k Keeper) Authority() string { return k.authority }
