package types

import "cosmossdk.io/collections"

const (
	// ModuleName is the scheduler module's name, store key and route.
	ModuleName = "scheduler"
	StoreKey   = ModuleName
)

// Store prefixes. They are part of the state layout: never reuse or renumber.
var (
	ParamsKey    = collections.NewPrefix(0)
	NextIDKey    = collections.NewPrefix(1)
	TasksKey     = collections.NewPrefix(2)
	DueIndexKey  = collections.NewPrefix(3)
	TypeIndexKey = collections.NewPrefix(4)
	FailedKey    = collections.NewPrefix(5)
)
