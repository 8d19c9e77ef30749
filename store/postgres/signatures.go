package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/store"
)

// PutSignature implements store.Signatures.
func (s *Store) PutSignature(ctx context.Context, sig store.Signature) error {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, sig.EscrowID)
	if err != nil {
		return err
	}
	var stored []byte
	err = s.pool.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO signatures (epoch_id, escrow_id, nonce, slot, data) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (epoch_id, escrow_id, nonce, slot) DO NOTHING RETURNING data
		)
		SELECT data FROM ins
		UNION ALL
		SELECT data FROM signatures WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3 AND slot = $4
		LIMIT 1`,
		int64(epoch), int64(sig.EscrowID), int64(sig.Nonce), int64(sig.Slot), sig.Data).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		// Lost a race: the other writer committed after our snapshot.
		err = s.pool.QueryRow(ctx, "SELECT data FROM signatures WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3 AND slot = $4",
			int64(epoch), int64(sig.EscrowID), int64(sig.Nonce), int64(sig.Slot)).Scan(&stored)
	}
	if err != nil {
		return s.fail(err, "store signature of escrow %d at nonce %d", sig.EscrowID, sig.Nonce)
	}
	if string(stored) != string(sig.Data) {
		return store.Errorf(store.ErrConflict, "escrow %d already has a different signature of slot %d at nonce %d; refusing to sign a second state there",
			sig.EscrowID, sig.Slot, sig.Nonce)
	}
	return nil
}

// Signatures implements store.Signatures.
func (s *Store) Signatures(ctx context.Context, escrowID, nonce uint64) ([]store.Signature, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT slot, data FROM signatures WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3 ORDER BY slot",
		int64(epoch), int64(escrowID), int64(nonce))
	if err != nil {
		return nil, s.fail(err, "read signatures of escrow %d at nonce %d", escrowID, nonce)
	}
	defer rows.Close()
	out := []store.Signature{}
	for rows.Next() {
		sig := store.Signature{EscrowID: escrowID, Nonce: nonce}
		var slot int64
		if err := rows.Scan(&slot, &sig.Data); err != nil {
			return nil, s.fail(err, "read signatures of escrow %d at nonce %d", escrowID, nonce)
		}
		sig.Slot = uint32(slot)
		out = append(out, sig)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(err, "read signatures of escrow %d at nonce %d", escrowID, nonce)
	}
	return out, nil
}
