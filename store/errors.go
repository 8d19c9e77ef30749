package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Kinds of store errors. Drivers return them wrapped in a sentence (an
// *Error, *ForkError, *GapError or *BatchError); match with errors.Is.
var (
	// ErrNotFound: no such session, snapshot or diff. Also returned for
	// escrows whose epoch has been pruned.
	ErrNotFound = errors.New("not found")
	// ErrFork: a diff with different bytes is stored at that nonce. The
	// stored diff stays; the new one is refused. See ForkError.
	ErrFork = errors.New("diff forks the stored history")
	// ErrNonceGap: the nonce does not follow the stored chain. See GapError.
	ErrNonceGap = errors.New("nonce gap")
	// ErrConflict: the same key was written with different content: a session
	// re-created with another snapshot, or another signature at a slot.
	ErrConflict = errors.New("conflicting write")
	// ErrEpochPruned: the epoch's storage was pruned (or lies outside the
	// retention window), so nothing can be created in it.
	ErrEpochPruned = errors.New("epoch pruned")
	// ErrUnavailable: the backend holding the data cannot be reached. The
	// outcome of a write that failed this way is unknown; retry it later.
	ErrUnavailable = errors.New("storage unavailable")
	// ErrQuarantined: two backends claim the escrow (hybrid), so neither copy
	// is trusted until an operator removes one.
	ErrQuarantined = errors.New("escrow quarantined")
	// ErrInvalid: the caller passed a malformed value (nonce 0, missing root).
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)

// Error is a store error: a sentence for a person, a Kind for code, and the
// underlying cause if there is one.
type Error struct {
	Kind error // one of the Err* sentinels
	Msg  string
	Err  error
}

// Errorf returns an *Error of kind with a formatted sentence.
func Errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error of kind with a formatted sentence and cause err.
func Wrap(kind, err error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: err}
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

// Is matches the error's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func (e *Error) Unwrap() error { return e.Err }

// ForkError is a diff refused because different bytes are stored at its
// nonce.
type ForkError struct {
	EscrowID, Nonce uint64
	Stored, Got     [32]byte // SHA-256 of the stored and the offered diff bytes
}

// NewForkError describes a fork between stored and offered diff bytes.
func NewForkError(escrowID, nonce uint64, stored, got []byte) *ForkError {
	return &ForkError{EscrowID: escrowID, Nonce: nonce, Stored: sha256.Sum256(stored), Got: sha256.Sum256(got)}
}

func (e *ForkError) Error() string {
	return fmt.Sprintf("diff %d of escrow %d refused: a different diff is stored at that nonce (stored %s…, got %s…)",
		e.Nonce, e.EscrowID, hex.EncodeToString(e.Stored[:4]), hex.EncodeToString(e.Got[:4]))
}

// Is matches ErrFork.
func (e *ForkError) Is(target error) bool { return target == ErrFork }

// GapError is a diff refused because its predecessor is not stored.
type GapError struct {
	EscrowID, Nonce uint64
	Last            uint64 // highest stored nonce
}

func (e *GapError) Error() string {
	return fmt.Sprintf("diff %d of escrow %d refused: the store holds nonces 1..%d, so the next diff must be %d",
		e.Nonce, e.EscrowID, e.Last, e.Last+1)
}

// Is matches ErrNonceGap.
func (e *GapError) Is(target error) bool { return target == ErrNonceGap }

// BatchError reports the diffs of an AppendDiffs batch that were refused.
// Errs has one entry per diff of the batch; a nil entry was stored.
type BatchError struct {
	Errs []error
}

func (e *BatchError) Error() string {
	var failed []error
	for _, err := range e.Errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) == 0 {
		return "every diff of the batch was stored"
	}
	msg := fmt.Sprintf("%d of %d diffs were not stored: %v", len(failed), len(e.Errs), failed[0])
	if len(failed) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(failed)-1)
	}
	return msg
}

// Unwrap returns the refused diffs' errors, so errors.Is sees through a
// batch.
func (e *BatchError) Unwrap() []error {
	var out []error
	for _, err := range e.Errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// BatchResult turns per-diff outcomes into AppendDiffs' return value: nil
// when all succeeded, a *BatchError otherwise.
func BatchResult(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return &BatchError{Errs: errs}
		}
	}
	return nil
}

// DiffErrors expands an AppendDiffs result for a batch of n diffs into one
// error per diff: a BatchError's entries, or err for every diff when the
// batch failed as a whole.
func DiffErrors(err error, n int) []error {
	out := make([]error, n)
	if err == nil {
		return out
	}
	var be *BatchError
	if errors.As(err, &be) && len(be.Errs) == n {
		copy(out, be.Errs)
		return out
	}
	for i := range out {
		out[i] = err
	}
	return out
}

// CheckDiff reports whether d is well-formed enough to store.
func CheckDiff(d *Diff) error {
	switch {
	case d.Nonce == 0:
		return Errorf(ErrInvalid, "diff of escrow %d has nonce 0; nonces start at 1", d.EscrowID)
	case len(d.Root) != 32:
		return Errorf(ErrInvalid, "diff %d of escrow %d has a %d-byte root; it must be 32 bytes", d.Nonce, d.EscrowID, len(d.Root))
	case len(d.Data) == 0:
		return Errorf(ErrInvalid, "diff %d of escrow %d is empty", d.Nonce, d.EscrowID)
	}
	for _, s := range d.Sealed {
		if s.EscrowID != d.EscrowID || s.Nonce != d.Nonce {
			return Errorf(ErrInvalid, "diff %d of escrow %d carries a sealed row for escrow %d, nonce %d; rows must be the diff's own",
				d.Nonce, d.EscrowID, s.EscrowID, s.Nonce)
		}
	}
	for _, s := range d.Signatures {
		switch {
		case s.EscrowID != d.EscrowID || s.Nonce != d.Nonce:
			return Errorf(ErrInvalid, "diff %d of escrow %d carries a signature for escrow %d, nonce %d; signatures must be over the diff's own state",
				d.Nonce, d.EscrowID, s.EscrowID, s.Nonce)
		case len(s.Data) == 0:
			return Errorf(ErrInvalid, "diff %d of escrow %d carries an empty signature of slot %d", d.Nonce, d.EscrowID, s.Slot)
		}
	}
	return nil
}

// SameDiff reports whether a stored diff's root and data equal d's.
func SameDiff(root, data []byte, d *Diff) bool {
	return string(root) == string(d.Root) && string(data) == string(d.Data)
}
