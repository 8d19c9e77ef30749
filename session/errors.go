package session

import (
	"encoding/hex"
	"fmt"
)

// Reason classifies why a diff or a settlement was rejected. Every rejection
// wraps exactly one Reason, so callers match with errors.Is and metrics can
// count rejects by reason.
type Reason string

func (r Reason) Error() string { return string(r) }

// Rejection reasons.
const (
	ReasonMalformed    Reason = "malformed"          // a field is missing, oversized or out of range
	ReasonEscrow       Reason = "wrong_escrow"       // the message names another escrow
	ReasonNonce        Reason = "nonce"              // not latest+1, or past the snapshot's max_nonce
	ReasonPhase        Reason = "phase"              // the tx, or a settlement by the creator, is not allowed in the session's phase
	ReasonSignature    Reason = "signature"          // missing, malformed or not verifying
	ReasonUnauthorized Reason = "unauthorized"       // signed by a key that may not act for the slot
	ReasonStatus       Reason = "status"             // the inference is not in a status the tx needs
	ReasonFunds        Reason = "insufficient_funds" // the escrow cannot pay a fee or a reservation
	ReasonSelfVote     Reason = "self_vote"          // an executor voting on its own inference
	ReasonNotSampled   Reason = "not_sampled"        // a validation of an unchallenged inference from a slot the draw did not pick
	ReasonDuplicate    Reason = "duplicate_vote"     // a slot voting twice on one inference
	ReasonOverflow     Reason = "overflow"           // an amount would overflow uint64
	ReasonRoot         Reason = "root_mismatch"      // the signed root differs from the computed one
	ReasonFees         Reason = "fees_mismatch"      // settlement fees differ from the snapshot's formula
	ReasonVersion      Reason = "protocol_version"   // settlement version differs from the snapshot
	ReasonQuorum       Reason = "quorum"             // not more than 2/3 of slots signed
	ReasonConservation Reason = "conservation"       // the books do not add up to the escrow amount
	ReasonState        Reason = "bad_state"          // a stored state fails its own invariants
	ReasonEncoding     Reason = "encoding"           // protobuf bytes that decode but are not the canonical encoding
	ReasonStale        Reason = "stale_nonce"        // a settlement no newer than the one pending in its challenge window
)

// DiffError is a rejected diff. Nothing was applied.
type DiffError struct {
	Nonce  uint64
	Tx     int // index of the offending tx, or -1 for the diff itself
	Reason Reason
	Detail string
}

func (e *DiffError) Error() string {
	if e.Tx >= 0 {
		return fmt.Sprintf("diff %d rejected: tx %d: %s", e.Nonce, e.Tx, e.Detail)
	}
	return fmt.Sprintf("diff %d rejected: %s", e.Nonce, e.Detail)
}

func (e *DiffError) Unwrap() error { return e.Reason }

// SettlementError is a rejected settlement.
type SettlementError struct {
	EscrowID uint64
	Reason   Reason
	Detail   string
}

func (e *SettlementError) Error() string {
	return fmt.Sprintf("settlement of escrow %d rejected: %s", e.EscrowID, e.Detail)
}

func (e *SettlementError) Unwrap() error { return e.Reason }

// StateError is a stored state or snapshot that cannot be loaded.
type StateError struct {
	Reason Reason
	Detail string
}

func (e *StateError) Error() string { return "invalid session state: " + e.Detail }

func (e *StateError) Unwrap() error { return e.Reason }

// short renders a hash for error messages: enough to tell two apart.
func short(b []byte) string {
	if len(b) > 4 {
		return hex.EncodeToString(b[:4]) + "…"
	}
	return hex.EncodeToString(b)
}
