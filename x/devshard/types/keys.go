package types

import "cosmossdk.io/collections"

const (
	// ModuleName is the module's name, store key, route and module account.
	ModuleName = "devshard"
	StoreKey   = ModuleName
)

// Store prefixes. They are part of the state layout: never reuse or renumber.
var (
	ParamsKey          = collections.NewPrefix(0)
	CurrentEpochKey    = collections.NewPrefix(1)
	EpochsKey          = collections.NewPrefix(2)
	EpochStateIndexKey = collections.NewPrefix(3)
	ParticipantsKey    = collections.NewPrefix(4)
	MembersKey         = collections.NewPrefix(5)
	UnbondingKey       = collections.NewPrefix(6)
	EscrowSeqKey       = collections.NewPrefix(7)
	EscrowsKey         = collections.NewPrefix(8)
	EscrowExpiryKey    = collections.NewPrefix(9)
	EscrowCountKey     = collections.NewPrefix(10)
	SummariesKey       = collections.NewPrefix(11)
	PendingKey         = collections.NewPrefix(12)
	UpgradeHeightsKey  = collections.NewPrefix(13)
)

// Scheduler task types that drive the epoch lifecycle. Each task's payload
// is the epoch id, 8 bytes big-endian.
const (
	TaskEpochBegin     = "devshard/epoch-begin"
	TaskEpochSettle    = "devshard/epoch-settle"
	TaskEpochAccount   = "devshard/epoch-account"
	TaskEpochClaimable = "devshard/epoch-claimable"
	TaskEpochClose     = "devshard/epoch-close"
)

// TaskSettlementWindow pays a pending settlement when its challenge window
// closes. Its payload is the escrow id, 8 bytes big-endian.
const TaskSettlementWindow = "devshard/settlement-window"
