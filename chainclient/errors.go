package chainclient

import (
	"errors"
	"fmt"

	errorsmod "cosmossdk.io/errors"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"

	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// What the chain's answers mean to its clients. A refused tx is a *TxError,
// which errors.Is matches against the registered error of its code, so
// these are matched from the code the chain returned, never from its log.
var (
	// ErrInsufficientFunds is an account that cannot pay what the tx
	// moves: an escrow its creator cannot lock.
	ErrInsufficientFunds = sdkerrors.ErrInsufficientFunds
	// ErrNoEpoch means no epoch is ACTIVE, so no escrow can be created.
	ErrNoEpoch = devshardtypes.ErrEpochNotActive
	// ErrUnapprovedVersion is an escrow asked for under a runtime version
	// the chain does not approve (or under none while it approves some).
	ErrUnapprovedVersion = devshardtypes.ErrUnapprovedVersion
	// ErrExpired means the escrow expired on chain before it was settled:
	// its whole amount went back to its creator and it can never be settled.
	ErrExpired = errors.New("escrow expired")
	// ErrNoEscrow is an escrow id the chain does not know.
	ErrNoEscrow = errors.New("no such escrow on chain")
	// ErrNotIncluded is a tx that was sent but that no block included
	// within the sender's wait: the node that took it went away, or the
	// chain makes no blocks. It may still land.
	ErrNotIncluded = errors.New("no block included it")
	// ErrReadOnly is a send from a client configured without a key.
	ErrReadOnly = errors.New("the chain client has no key to send with")
)

// TxError is a tx the chain refused: in simulation (before it was signed
// and sent; Hash is empty), in CheckTx, or in its block (Included: it paid
// its fee but changed nothing else).
//
// errors.Is matches it against the registered error of its codespace and
// code (sdkerrors.ErrInsufficientFunds, devshardtypes.ErrEscrowClosed, ...)
// and, for a settlement the protocol refused, against the session.Reason
// that code stands for (session.ReasonRoot, session.ReasonQuorum, ...).
type TxError struct {
	Hash      string
	Codespace string
	Code      uint32
	Log       string
	Included  bool
}

func (e *TxError) Error() string {
	switch {
	case e.Hash == "":
		return fmt.Sprintf("the chain refuses the tx (%s code %d): %s", e.Codespace, e.Code, e.Log)
	case e.Included:
		return fmt.Sprintf("tx %s failed in its block (%s code %d): %s", e.Hash, e.Codespace, e.Code, e.Log)
	}
	return fmt.Sprintf("tx %s rejected before inclusion (%s code %d): %s", e.Hash, e.Codespace, e.Code, e.Log)
}

// Unwrap is what the code means: the registered error it was made from
// (which matches nothing when this build does not know the code) and, for
// a refused settlement, the protocol's reason.
func (e *TxError) Unwrap() []error {
	out := []error{errorsmod.ABCIError(e.Codespace, e.Code, "")}
	if r, ok := devshardtypes.ReasonOf(e.Codespace, e.Code); ok {
		out = append(out, r)
	}
	return out
}
