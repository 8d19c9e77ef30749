package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/store"
)

// PutSnapshot implements store.Snapshots.
func (s *Store) PutSnapshot(ctx context.Context, snap store.Snapshot) error {
	if snap.Nonce == 0 || len(snap.Root) != 32 || len(snap.State) == 0 {
		return store.Errorf(store.ErrInvalid, "snapshot of escrow %d at nonce %d is malformed: it needs a nonce, a 32-byte root and a state", snap.EscrowID, snap.Nonce)
	}
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, snap.EscrowID)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `
		INSERT INTO snapshots (epoch_id, escrow_id, nonce, root, state) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (epoch_id, escrow_id) DO UPDATE SET nonce = excluded.nonce, root = excluded.root, state = excluded.state
		WHERE excluded.nonce > snapshots.nonce`,
		int64(epoch), int64(snap.EscrowID), int64(snap.Nonce), snap.Root, snap.State)
	if err != nil {
		return s.fail(err, "store snapshot of escrow %d at nonce %d", snap.EscrowID, snap.Nonce)
	}
	return nil
}

// Snapshot implements store.Snapshots.
func (s *Store) Snapshot(ctx context.Context, escrowID uint64) (store.Snapshot, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return store.Snapshot{}, err
	}
	snap := store.Snapshot{EscrowID: escrowID}
	var nonce int64
	err = s.pool.QueryRow(ctx, "SELECT nonce, root, state FROM snapshots WHERE epoch_id = $1 AND escrow_id = $2",
		int64(epoch), int64(escrowID)).Scan(&nonce, &snap.Root, &snap.State)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Snapshot{}, store.Errorf(store.ErrNotFound, "escrow %d has no snapshot yet", escrowID)
	}
	if err != nil {
		return store.Snapshot{}, s.fail(err, "read snapshot of escrow %d", escrowID)
	}
	snap.Nonce = uint64(nonce)
	return snap, nil
}
