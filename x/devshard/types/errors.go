package types

import "cosmossdk.io/errors"

// Registered errors. Their codes are part of the ABCI interface: never renumber.
var (
	ErrInvalidParams        = errors.Register(ModuleName, 2, "invalid params")
	ErrInvalidAuthority     = errors.Register(ModuleName, 3, "invalid authority")
	ErrEpochNotFound        = errors.Register(ModuleName, 4, "epoch not found")
	ErrIllegalTransition    = errors.Register(ModuleName, 5, "illegal epoch transition")
	ErrInvalidParticipant   = errors.Register(ModuleName, 6, "invalid participant registration")
	ErrAlreadyRegistered    = errors.Register(ModuleName, 7, "participant already registered")
	ErrParticipantNotFound  = errors.Register(ModuleName, 8, "participant not found")
	ErrCollateralStillBound = errors.Register(ModuleName, 9, "collateral still bonded")
	ErrNotMember            = errors.Register(ModuleName, 10, "not effective in epoch")
	ErrNotExecutable        = errors.Register(ModuleName, 11, "message is a grant permission, not an action")
	ErrInvalidGenesis       = errors.Register(ModuleName, 12, "invalid genesis")
)
