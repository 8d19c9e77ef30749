package types

import "cosmossdk.io/errors"

// Registered errors. Their codes are part of the ABCI interface: never renumber.
var (
	ErrUnknownTaskType  = errors.Register(ModuleName, 2, "unknown task type")
	ErrInvalidTask      = errors.Register(ModuleName, 3, "invalid task")
	ErrTaskNotFound     = errors.Register(ModuleName, 4, "task not found")
	ErrInvalidParams    = errors.Register(ModuleName, 5, "invalid scheduler params")
	ErrInvalidAuthority = errors.Register(ModuleName, 6, "invalid authority")
	ErrInvalidGenesis   = errors.Register(ModuleName, 7, "invalid scheduler genesis")
)
