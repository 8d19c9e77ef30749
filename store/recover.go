package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// replayChunk is how many diffs recovery reads per query.
const replayChunk = 512

// Recovery says how Recover rebuilt a session.
type Recovery struct {
	// SnapshotNonce is the nonce of the snapshot recovery started from, 0
	// when it replayed from the first diff.
	SnapshotNonce uint64
	// Replayed is the number of diffs applied on top of the snapshot.
	Replayed int
	// Rejected says why a stored snapshot was not used; nil when it was used
	// or there was none. A rejected snapshot costs a full replay, never
	// correctness.
	Rejected error
	// IndexRebuilt is how many sealed-index rows recovery wrote because the
	// index was lost or did not match the diffs; 0 when it was intact.
	IndexRebuilt int
}

// Recoverer is what recovery reads, and the derived index it repairs.
type Recoverer interface {
	Reader
	Index
}

// Recover rebuilds an escrow's session from storage. It loads the snapshot,
// checks its root against the stored diff at the snapshot's nonce, restores
// it, and replays only the diffs after it through session.Apply. Without a
// usable snapshot it replays every diff from nonce 1. A stored diff that does
// not apply is an error: the store's history is not a valid session.
//
// Then it checks the sealed-inference index: an intact index holds one row
// per sealed record, so a row count other than the session's sealed count
// means rows were lost (or are left from elsewhere), and the index is
// rebuilt from the diffs. The check is one count query; the full replay is
// paid only when the index is wrong.
func Recover(ctx context.Context, r Recoverer, escrowID uint64, auth session.Authorizer) (*session.Session, Recovery, error) {
	var rec Recovery
	info, err := r.Session(ctx, escrowID)
	if err != nil {
		return nil, rec, err
	}
	s, err := fromSnapshot(ctx, r, info, auth)
	switch {
	case err != nil && !errors.Is(err, ErrNotFound):
		rec.Rejected = err
		fallthrough
	case s == nil:
		if s, err = session.New(info.Snapshot, auth); err != nil {
			return nil, rec, fmt.Errorf("recover escrow %d: its stored escrow snapshot does not start a session: %w", escrowID, err)
		}
	default:
		rec.SnapshotNonce = s.Nonce()
	}
	rec.Replayed, err = replay(ctx, r, escrowID, s, func(Diff, *session.Result) error { return nil })
	if err != nil {
		return nil, rec, err
	}
	rows, err := r.SealedCount(ctx, escrowID)
	if err != nil {
		return nil, rec, err
	}
	if rows != s.SealedCount() {
		if rec.IndexRebuilt, err = RebuildIndex(ctx, r, escrowID, auth); err != nil {
			return nil, rec, fmt.Errorf("recover escrow %d: its sealed index holds %d rows for %d sealed records, and rebuilding it failed: %w", escrowID, rows, s.SealedCount(), err)
		}
	}
	return s, rec, nil
}

// fromSnapshot restores the escrow's snapshot after checking it against the
// stored diff at its nonce. It returns ErrNotFound if there is no snapshot.
func fromSnapshot(ctx context.Context, r Reader, info *Session, auth session.Authorizer) (*session.Session, error) {
	id := info.EscrowID
	snap, err := r.Snapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	at, err := r.Diffs(ctx, id, snap.Nonce, 1)
	if err != nil {
		return nil, err
	}
	if len(at) == 0 || at[0].Nonce != snap.Nonce {
		return nil, fmt.Errorf("snapshot of escrow %d is at nonce %d, but no diff is stored there", id, snap.Nonce)
	}
	if !bytes.Equal(at[0].Root, snap.Root) {
		return nil, fmt.Errorf("snapshot of escrow %d at nonce %d has root %x…, but the stored diff commits to %x…",
			id, snap.Nonce, head(snap.Root), head(at[0].Root))
	}
	var st sessionpb.SessionState
	if err := st.Unmarshal(snap.State); err != nil {
		return nil, fmt.Errorf("snapshot of escrow %d at nonce %d does not decode: %w", id, snap.Nonce, err)
	}
	if st.Nonce != snap.Nonce {
		return nil, fmt.Errorf("snapshot of escrow %d is filed at nonce %d but holds the state at nonce %d", id, snap.Nonce, st.Nonce)
	}
	s, err := session.Restore(info.Snapshot, &st, auth)
	if err != nil {
		return nil, fmt.Errorf("snapshot of escrow %d at nonce %d does not restore: %w", id, snap.Nonce, err)
	}
	if root := s.Root(); !bytes.Equal(root[:], snap.Root) {
		return nil, fmt.Errorf("snapshot of escrow %d at nonce %d restores to root %x…, not the %x… it was filed with",
			id, snap.Nonce, head(root[:]), head(snap.Root))
	}
	return s, nil
}

// replay applies the escrow's stored diffs after s.Nonce() to s, calling fn
// after each, until the stored chain ends. It returns how many it applied.
func replay(ctx context.Context, r Reader, escrowID uint64, s *session.Session, fn func(Diff, *session.Result) error) (int, error) {
	n := 0
	for {
		ds, err := r.Diffs(ctx, escrowID, s.Nonce()+1, replayChunk)
		if err != nil {
			return n, err
		}
		if len(ds) == 0 {
			return n, nil
		}
		for _, sd := range ds {
			var d sessionpb.Diff
			if err := d.Unmarshal(sd.Data); err != nil {
				return n, fmt.Errorf("stored diff %d of escrow %d does not decode: %w", sd.Nonce, sd.EscrowID, err)
			}
			if !bytes.Equal(d.PostStateRoot, sd.Root) {
				return n, fmt.Errorf("stored diff %d of escrow %d commits to root %x…, but was filed with root %x…",
					sd.Nonce, sd.EscrowID, head(d.PostStateRoot), head(sd.Root))
			}
			res, err := s.Apply(&d)
			if err != nil {
				return n, fmt.Errorf("stored diff %d of escrow %d does not apply: %w", sd.Nonce, sd.EscrowID, err)
			}
			n++
			if err := fn(sd, res); err != nil {
				return n, err
			}
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 4)] }
