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
	ErrInvalidEscrow        = errors.Register(ModuleName, 13, "invalid escrow")
	ErrEpochNotActive       = errors.Register(ModuleName, 14, "epoch not active")
	ErrEscrowLimit          = errors.Register(ModuleName, 15, "escrow limit reached")
	ErrEscrowNotFound       = errors.Register(ModuleName, 16, "escrow not found")
	ErrEscrowClosed         = errors.Register(ModuleName, 17, "escrow already settled or expired")
	ErrSettlement           = errors.Register(ModuleName, 18, "settlement rejected")
	ErrNoGroup              = errors.Register(ModuleName, 19, "no participants to form a group")
	ErrNotClaimable         = errors.Register(ModuleName, 20, "rewards not claimable")
	ErrAlreadyClaimed       = errors.Register(ModuleName, 21, "rewards already claimed")
	ErrOverflow             = errors.Register(ModuleName, 22, "amount overflow")
)
