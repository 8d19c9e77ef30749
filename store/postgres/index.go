package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/store"
)

const qPutSealed = `
INSERT INTO sealed (epoch_id, escrow_id, inference_id, nonce, record) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (epoch_id, escrow_id, inference_id) DO UPDATE SET nonce = excluded.nonce, record = excluded.record`

// IndexSealed implements store.Index.
func (s *Store) IndexSealed(ctx context.Context, rows []store.Sealed) error {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	batch := &pgx.Batch{}
	for _, r := range rows {
		epoch, err := s.epochOf(ctx, r.EscrowID)
		if err != nil {
			return err
		}
		batch.Queue(qPutSealed, int64(epoch), int64(r.EscrowID), int64(r.InferenceID), int64(r.Nonce), r.Record)
	}
	if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return s.fail(err, "write %d sealed index rows", len(rows))
	}
	return nil
}

// Sealed implements store.Index.
func (s *Store) Sealed(ctx context.Context, escrowID uint64) ([]store.Sealed, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT inference_id, nonce, record FROM sealed WHERE epoch_id = $1 AND escrow_id = $2 ORDER BY inference_id",
		int64(epoch), int64(escrowID))
	if err != nil {
		return nil, s.fail(err, "read the sealed index of escrow %d", escrowID)
	}
	defer rows.Close()
	out := []store.Sealed{}
	for rows.Next() {
		r := store.Sealed{EscrowID: escrowID}
		var inf, nonce int64
		if err := rows.Scan(&inf, &nonce, &r.Record); err != nil {
			return nil, s.fail(err, "read the sealed index of escrow %d", escrowID)
		}
		r.InferenceID, r.Nonce = uint64(inf), uint64(nonce)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(err, "read the sealed index of escrow %d", escrowID)
	}
	return out, nil
}

// SealedCount implements store.Index.
func (s *Store) SealedCount(ctx context.Context, escrowID uint64) (uint64, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := s.pool.QueryRow(ctx, "SELECT COUNT(*) FROM sealed WHERE epoch_id = $1 AND escrow_id = $2", int64(epoch), int64(escrowID)).Scan(&n); err != nil {
		return 0, s.fail(err, "count the sealed index of escrow %d", escrowID)
	}
	return uint64(n), nil
}

// ClearIndex implements store.Index.
func (s *Store) ClearIndex(ctx context.Context, escrowID uint64) error {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM sealed WHERE epoch_id = $1 AND escrow_id = $2", int64(epoch), int64(escrowID)); err != nil {
		return s.fail(err, "clear the sealed index of escrow %d", escrowID)
	}
	return nil
}
