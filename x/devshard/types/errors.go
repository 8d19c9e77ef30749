package types

import (
	"errors"
	"fmt"

	errorsmod "cosmossdk.io/errors"

	"github.com/devshard/devshard/session"
)

// Registered errors. Their codes are part of the ABCI interface: never renumber.
var (
	ErrInvalidParams        = errorsmod.Register(ModuleName, 2, "invalid params")
	ErrInvalidAuthority     = errorsmod.Register(ModuleName, 3, "invalid authority")
	ErrEpochNotFound        = errorsmod.Register(ModuleName, 4, "epoch not found")
	ErrIllegalTransition    = errorsmod.Register(ModuleName, 5, "illegal epoch transition")
	ErrInvalidParticipant   = errorsmod.Register(ModuleName, 6, "invalid participant registration")
	ErrAlreadyRegistered    = errorsmod.Register(ModuleName, 7, "participant already registered")
	ErrParticipantNotFound  = errorsmod.Register(ModuleName, 8, "participant not found")
	ErrCollateralStillBound = errorsmod.Register(ModuleName, 9, "collateral still bonded")
	ErrNotMember            = errorsmod.Register(ModuleName, 10, "not effective in epoch")
	ErrNotExecutable        = errorsmod.Register(ModuleName, 11, "message is a grant permission, not an action")
	ErrInvalidGenesis       = errorsmod.Register(ModuleName, 12, "invalid genesis")
	ErrInvalidEscrow        = errorsmod.Register(ModuleName, 13, "invalid escrow")
	ErrEpochNotActive       = errorsmod.Register(ModuleName, 14, "epoch not active")
	ErrEscrowLimit          = errorsmod.Register(ModuleName, 15, "escrow limit reached")
	ErrEscrowNotFound       = errorsmod.Register(ModuleName, 16, "escrow not found")
	ErrEscrowClosed         = errorsmod.Register(ModuleName, 17, "escrow already settled or expired")
	ErrSettlement           = errorsmod.Register(ModuleName, 18, "settlement rejected")
	ErrNoGroup              = errorsmod.Register(ModuleName, 19, "no participants to form a group")
	ErrNotClaimable         = errorsmod.Register(ModuleName, 20, "rewards not claimable")
	ErrAlreadyClaimed       = errorsmod.Register(ModuleName, 21, "rewards already claimed")
	ErrOverflow             = errorsmod.Register(ModuleName, 22, "amount overflow")
	// Code 43: 23 to 42 are the protocol reasons below.
	ErrUnapprovedVersion = errorsmod.Register(ModuleName, 43, "runtime version not approved")
)

// The protocol package's rejection reasons, registered so that a client
// reads which rule refused its settlement from the tx's code, not its log.
// Never renumber; a new reason takes the next free code.
var reasonErrors = map[session.Reason]*errorsmod.Error{
	session.ReasonMalformed:    errorsmod.Register(ModuleName, 23, "settlement rejected: malformed"),
	session.ReasonEscrow:       errorsmod.Register(ModuleName, 24, "settlement rejected: wrong escrow"),
	session.ReasonNonce:        errorsmod.Register(ModuleName, 25, "settlement rejected: nonce"),
	session.ReasonPhase:        errorsmod.Register(ModuleName, 26, "settlement rejected: phase"),
	session.ReasonSignature:    errorsmod.Register(ModuleName, 27, "settlement rejected: signature"),
	session.ReasonUnauthorized: errorsmod.Register(ModuleName, 28, "settlement rejected: unauthorized"),
	session.ReasonStatus:       errorsmod.Register(ModuleName, 29, "settlement rejected: status"),
	session.ReasonFunds:        errorsmod.Register(ModuleName, 30, "settlement rejected: insufficient funds"),
	session.ReasonSelfVote:     errorsmod.Register(ModuleName, 31, "settlement rejected: self vote"),
	session.ReasonDuplicate:    errorsmod.Register(ModuleName, 32, "settlement rejected: duplicate vote"),
	session.ReasonOverflow:     errorsmod.Register(ModuleName, 33, "settlement rejected: overflow"),
	session.ReasonRoot:         errorsmod.Register(ModuleName, 34, "settlement rejected: root mismatch"),
	session.ReasonFees:         errorsmod.Register(ModuleName, 35, "settlement rejected: fees mismatch"),
	session.ReasonVersion:      errorsmod.Register(ModuleName, 36, "settlement rejected: protocol version"),
	session.ReasonQuorum:       errorsmod.Register(ModuleName, 37, "settlement rejected: quorum"),
	session.ReasonConservation: errorsmod.Register(ModuleName, 38, "settlement rejected: conservation"),
	session.ReasonState:        errorsmod.Register(ModuleName, 39, "settlement rejected: bad state"),
	session.ReasonStale:        errorsmod.Register(ModuleName, 40, "settlement rejected: stale nonce"),
	session.ReasonNotSampled:   errorsmod.Register(ModuleName, 41, "settlement rejected: not sampled"),
	session.ReasonEncoding:     errorsmod.Register(ModuleName, 42, "settlement rejected: encoding"),
}

// ReasonOf is the protocol reason a refused tx's code stands for: a client
// reads from (codespace, code) which rule refused its settlement, without
// parsing the log. ok is false for any other code.
func ReasonOf(codespace string, code uint32) (reason session.Reason, ok bool) {
	if codespace != ModuleName {
		return "", false
	}
	for r, e := range reasonErrors { // deterministic: codes are unique, so at most one matches
		if e.ABCICode() == code {
			return r, true
		}
	}
	return "", false
}

// RejectedSettlement is a settlement the protocol package refused. It is
// ErrSettlement and the session's Reason to errors.Is, so callers in the
// chain match either, and its ABCI code is the reason's, so clients do too.
type RejectedSettlement struct {
	Code *errorsmod.Error // the reason's registered error (ErrSettlement if unknown)
	Err  error            // the protocol package's *session.SettlementError
	Note string           // the chain's context, appended to the message
}

// SettlementRejected wraps err, a refusal by package session, keeping its
// reason; note (may be empty) adds the chain's context.
func SettlementRejected(err error, note string) error {
	code := ErrSettlement
	var reason session.Reason
	if errors.As(err, &reason) {
		if c, ok := reasonErrors[reason]; ok {
			code = c
		}
	}
	return &RejectedSettlement{Code: code, Err: err, Note: note}
}

func (e *RejectedSettlement) Error() string {
	return fmt.Sprintf("%v%s: %s", e.Err, e.Note, ErrSettlement)
}

// Unwrap lets errors.Is find ErrSettlement, the reason's registered error
// and the session error with its Reason.
func (e *RejectedSettlement) Unwrap() []error { return []error{ErrSettlement, e.Code, e.Err} }

// ABCICode is the reason's registered code.
func (e *RejectedSettlement) ABCICode() uint32 { return e.Code.ABCICode() }

// Codespace is the module's.
func (e *RejectedSettlement) Codespace() string { return e.Code.Codespace() }
