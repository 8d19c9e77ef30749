// Package store is a host's durable session storage: the escrow sessions it
// serves, their diffs, its state signatures, one protocol snapshot per escrow
// and a derived index of sealed inferences.
//
// Store is the seam between the host and the drivers: store/sqlite (the
// default), store/postgres and store/hybrid. store/managed wraps any of them
// with epoch retention, and store/legacy moves a pre-epoch database into the
// layout. Every driver passes the conformance suite in store/storetest.
//
// # Layout
//
// Data is grouped by the epoch of the escrow it belongs to (the Epoch of the
// escrow snapshot), so that pruning an epoch is a file delete or a partition
// drop, never row deletes.
//
// # Contract shared by every method
//
//   - Durability. A write returns nil only once it is durable (the driver
//     documents its setting). The host persists first and publishes after, so
//     memory never runs ahead of disk.
//   - Atomicity. A write is all or nothing: an error means nothing of that
//     write was stored, except with ErrUnavailable, where the commit's outcome
//     is unknown. Every write is idempotent, so retrying it is always safe.
//   - Ownership. A Store never keeps or modifies a slice passed to it after the
//     call returns. Slices it returns are freshly allocated and belong to the
//     caller.
//   - Concurrency. Every method is safe for concurrent use. Two writers racing
//     for the same nonce of an escrow get exactly one winner.
//   - Errors. Errors are sentences naming the escrow, nonce or epoch. Match
//     them with errors.Is against the sentinels in errors.go, or errors.As
//     against ForkError, GapError and BatchError.
package store

import (
	"context"

	"github.com/devshard/devshard/session/sessionpb"
)

// Store is everything a host keeps about its sessions.
type Store interface {
	Sessions
	Diffs
	Signatures
	Snapshots
	Index
	Epochs
	// Close releases the store's connections and files. Calls after Close
	// return ErrClosed.
	Close() error
}

// Session is one escrow's stored session.
type Session struct {
	EscrowID uint64
	// Epoch is the escrow's epoch (Snapshot.Epoch): the unit of pruning.
	Epoch    uint64
	Snapshot *sessionpb.EscrowSnapshot
	// LastNonce is the highest stored diff nonce, 0 before the first diff.
	LastNonce uint64
}

// Sessions are the escrows a host serves.
type Sessions interface {
	// CreateSession stores a new session for snap.EscrowId in epoch
	// snap.Epoch. Creating it again with an identical snapshot is a no-op;
	// with a different snapshot it is ErrConflict. Creating a session in a
	// pruned epoch is ErrEpochPruned.
	CreateSession(ctx context.Context, snap *sessionpb.EscrowSnapshot) error
	// Session returns one session, or ErrNotFound (also once its epoch has
	// been pruned).
	Session(ctx context.Context, escrowID uint64) (*Session, error)
	// ListSessions returns every session of every live epoch, ordered by
	// escrow id.
	ListSessions(ctx context.Context) ([]*Session, error)
}

// Diff is one stored diff of an escrow's session.
type Diff struct {
	EscrowID uint64
	// Nonce is the diff's nonce, 1 for the first diff.
	Nonce uint64
	// Root is the post-state root the diff commits to (32 bytes). It is kept
	// beside Data so that recovery can check a snapshot without decoding.
	Root []byte
	// Data is the diff as the host received it: the marshalled
	// sessionpb.Diff. Replays are compared byte for byte.
	Data []byte
	// Sealed are the index rows that applying this diff produced. They are
	// written with the diff, in the same transaction; each row's EscrowID and
	// Nonce must be the diff's. Reads leave Sealed nil.
	Sealed []Sealed
	// Signatures are the host's own state signatures over Root, stored with
	// the diff in the same transaction, so that signing a new state costs no
	// durable commit of its own. Each row's EscrowID and Nonce must be the
	// diff's. They are written only with a newly inserted diff: a replay
	// leaves the stored signatures as they are. Read them with Signatures;
	// Diffs leaves this nil.
	Signatures []Signature
}

// Diffs is the append-only, gap-free chain of an escrow's diffs.
type Diffs interface {
	// AppendDiff stores d after the escrow's latest diff. The escrow's
	// session must exist (ErrNotFound). The nonce must be 1 or follow a
	// stored nonce (a *GapError, ErrNonceGap, otherwise). A byte-identical
	// replay of a stored diff is a no-op success and leaves the stored sealed
	// rows as they are; different bytes at a stored nonce are a *ForkError
	// (ErrFork).
	AppendDiff(ctx context.Context, d Diff) error
	// AppendDiffs stores a batch with one durable commit per backing file or
	// database (group commit). Each diff is checked as AppendDiff would, in
	// order, so a batch may carry consecutive nonces of one escrow. It
	// returns nil when every diff was stored or replayed; otherwise a
	// *BatchError with one entry per diff, where exactly the diffs with a
	// nil entry were stored (a commit that fails refuses all the diffs it
	// carried); or another error when nothing was stored.
	AppendDiffs(ctx context.Context, ds []Diff) error
	// Diffs returns up to limit diffs of the escrow with nonce >= from, in
	// nonce order, or an empty slice past the end. Sealed is nil.
	Diffs(ctx context.Context, escrowID, from uint64, limit int) ([]Diff, error)
	// LastNonce is the escrow's highest stored nonce, 0 before any diff.
	LastNonce(ctx context.Context, escrowID uint64) (uint64, error)
}

// Signature is a host signature over one state of a session.
type Signature struct {
	EscrowID uint64
	Nonce    uint64
	Slot     uint32
	// Data is the marshalled sessionpb.StateSignature.
	Data []byte
}

// Signatures are host state signatures, keyed by (escrow, nonce, slot).
type Signatures interface {
	// PutSignature stores sig. Storing identical bytes again is a no-op;
	// different bytes for the same key are ErrConflict, because a host
	// signing two states at one nonce is equivocating.
	PutSignature(ctx context.Context, sig Signature) error
	// Signatures returns the signatures at nonce in slot order, or an empty
	// slice.
	Signatures(ctx context.Context, escrowID, nonce uint64) ([]Signature, error)
}

// Snapshot is a restorable protocol state of one escrow at Nonce.
type Snapshot struct {
	EscrowID uint64
	Nonce    uint64
	// Root is the state root at Nonce; recovery checks it against the
	// stored diff at Nonce.
	Root []byte
	// State is the marshalled sessionpb.SessionState.
	State []byte
}

// Snapshots keep one snapshot per escrow.
type Snapshots interface {
	// PutSnapshot stores snap if its nonce is higher than the stored one's;
	// otherwise it is a no-op success, so a late writer never rolls the
	// snapshot back.
	PutSnapshot(ctx context.Context, snap Snapshot) error
	// Snapshot returns the escrow's snapshot, or ErrNotFound if there is
	// none (the session may still exist).
	Snapshot(ctx context.Context, escrowID uint64) (Snapshot, error)
}

// Sealed is one row of the sealed-inference index.
type Sealed struct {
	EscrowID    uint64
	InferenceID uint64
	// Nonce is the diff that sealed the record.
	Nonce uint64
	// Record is the marshalled sessionpb.InferenceRecord as sealed.
	Record []byte
}

// Index is the sealed-inference index: derived data, rebuilt from the diffs
// by RebuildIndex whenever it is lost (Recover does so when its row count
// is not the session's sealed count).
type Index interface {
	// IndexSealed writes rows, replacing rows with the same (escrow,
	// inference id): the index is derived, so the last write wins.
	IndexSealed(ctx context.Context, rows []Sealed) error
	// Sealed returns the escrow's rows in inference id order.
	Sealed(ctx context.Context, escrowID uint64) ([]Sealed, error)
	// SealedCount is how many rows the escrow has, read without the rows:
	// recovery compares it with the session's sealed count to tell an
	// intact index from a lost one.
	SealedCount(ctx context.Context, escrowID uint64) (uint64, error)
	// ClearIndex deletes the escrow's rows.
	ClearIndex(ctx context.Context, escrowID uint64) error
}

// Epochs manage storage per epoch.
type Epochs interface {
	// PrepareEpoch creates the epoch's storage ahead of its first session.
	// It is idempotent and safe under concurrent callers; a pruned epoch is
	// ErrEpochPruned. Creating a session prepares its epoch implicitly.
	PrepareEpoch(ctx context.Context, epoch uint64) error
	// Epochs lists the epochs that have storage and are not pruned, in
	// ascending order.
	Epochs(ctx context.Context) ([]uint64, error)
	// Prune deletes every session of epoch with all their data, at a cost
	// independent of how many sessions it held, and marks the epoch pruned,
	// so nothing is created in it again. Pruning an epoch again is a no-op;
	// pruning one that never had storage only marks it.
	Prune(ctx context.Context, epoch uint64) error
}

// Reader is what recovery reads.
type Reader interface {
	Session(ctx context.Context, escrowID uint64) (*Session, error)
	Diffs(ctx context.Context, escrowID, from uint64, limit int) ([]Diff, error)
	Snapshot(ctx context.Context, escrowID uint64) (Snapshot, error)
}
