package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/store"
)

// qAppend inserts one diff if its predecessor is stored, with the index rows
// it sealed, in one statement. It returns whether it inserted, and else the
// stored diff at that nonce (a replay or a fork) and the last stored nonce
// (a gap). The sealed rows and the diff's own signatures are written only
// with a newly inserted diff.
const qAppend = `
WITH ins AS (
	INSERT INTO diffs (epoch_id, escrow_id, nonce, root, data)
	SELECT $1::bigint, $2::bigint, $3::bigint, $4::bytea, $5::bytea
	WHERE $3::bigint = 1 OR EXISTS (
		SELECT 1 FROM diffs WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3::bigint - 1)
	ON CONFLICT (epoch_id, escrow_id, nonce) DO NOTHING
	RETURNING nonce
), idx AS (
	INSERT INTO sealed (epoch_id, escrow_id, inference_id, nonce, record)
	SELECT $1, $2, x.inference_id, ins.nonce, x.record
	FROM ins, unnest($6::bigint[], $7::bytea[]) AS x(inference_id, record)
	ON CONFLICT (epoch_id, escrow_id, inference_id) DO UPDATE SET nonce = excluded.nonce, record = excluded.record
), sig AS (
	INSERT INTO signatures (epoch_id, escrow_id, nonce, slot, data)
	SELECT $1, $2, ins.nonce, x.slot, x.data
	FROM ins, unnest($8::bigint[], $9::bytea[]) AS x(slot, data)
	ON CONFLICT (epoch_id, escrow_id, nonce, slot) DO NOTHING
)
SELECT EXISTS (SELECT 1 FROM ins),
	(SELECT root FROM diffs WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3),
	(SELECT data FROM diffs WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3),
	(SELECT COALESCE(MAX(nonce), 0) FROM diffs WHERE epoch_id = $1 AND escrow_id = $2)`

// AppendDiff implements store.Diffs.
func (s *Store) AppendDiff(ctx context.Context, d store.Diff) error {
	return store.DiffErrors(s.AppendDiffs(ctx, []store.Diff{d}), 1)[0]
}

// AppendDiffs implements store.Diffs. The batch is sent in one round trip
// and runs in one implicit transaction: one commit for all of it.
func (s *Store) AppendDiffs(ctx context.Context, ds []store.Diff) error {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	errs := make([]error, len(ds))
	var queued []int
	batch := &pgx.Batch{}
	for i := range ds {
		d := &ds[i]
		if err := store.CheckDiff(d); err != nil {
			errs[i] = err
			continue
		}
		epoch, err := s.epochOf(ctx, d.EscrowID)
		if err != nil {
			errs[i] = err
			continue
		}
		ids := make([]int64, len(d.Sealed))
		recs := make([][]byte, len(d.Sealed))
		for j, r := range d.Sealed {
			ids[j], recs[j] = int64(r.InferenceID), r.Record
		}
		slots := make([]int64, len(d.Signatures))
		sigs := make([][]byte, len(d.Signatures))
		for j, s := range d.Signatures {
			slots[j], sigs[j] = int64(s.Slot), s.Data
		}
		batch.Queue(qAppend, int64(epoch), int64(d.EscrowID), int64(d.Nonce), d.Root, d.Data, ids, recs, slots, sigs)
		queued = append(queued, i)
	}
	if len(queued) == 0 {
		return store.BatchResult(errs)
	}
	type outcome struct {
		inserted   bool
		root, data []byte
		last       int64
	}
	outs := make([]outcome, len(queued))
	br := s.pool.SendBatch(ctx, batch)
	for k := range queued {
		o := &outs[k]
		if err := br.QueryRow().Scan(&o.inserted, &o.root, &o.data, &o.last); err != nil {
			br.Close()
			return s.batchFailed(err, ds, queued)
		}
	}
	if err := br.Close(); err != nil {
		return s.batchFailed(err, ds, queued)
	}
	for k, i := range queued {
		errs[i] = s.outcome(ctx, &ds[i], outs[k].inserted, outs[k].root, outs[k].data, outs[k].last)
	}
	return store.BatchResult(errs)
}

// qReread is the stored diff at a nonce (NULLs if none) and the last stored
// nonce, in one snapshot.
const qReread = `SELECT
	(SELECT root FROM diffs WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3),
	(SELECT data FROM diffs WHERE epoch_id = $1 AND escrow_id = $2 AND nonce = $3),
	(SELECT COALESCE(MAX(nonce), 0) FROM diffs WHERE epoch_id = $1 AND escrow_id = $2)`

// outcome turns one qAppend result into the diff's error.
func (s *Store) outcome(ctx context.Context, d *store.Diff, inserted bool, root, data []byte, last int64) error {
	switch {
	case inserted:
		return nil
	case data != nil:
		if store.SameDiff(root, data, d) {
			return nil
		}
		return store.NewForkError(d.EscrowID, d.Nonce, data, d.Data)
	}
	// Nothing inserted and nothing seen at the nonce. The statement's
	// snapshot may predate a racing writer's commit of this very nonce:
	// its INSERT then waited for that writer and did nothing, and its
	// reads could not see the row. Read again, in a fresh snapshot, before
	// calling it a gap.
	epoch, err := s.epochOf(ctx, d.EscrowID)
	if err != nil {
		return err
	}
	err = s.pool.QueryRow(ctx, qReread, int64(epoch), int64(d.EscrowID), int64(d.Nonce)).Scan(&root, &data, &last)
	if err != nil {
		return s.fail(err, "read diff %d of escrow %d", d.Nonce, d.EscrowID)
	}
	if data != nil {
		return s.outcome(ctx, d, false, root, data, 0)
	}
	return &store.GapError{EscrowID: d.EscrowID, Nonce: d.Nonce, Last: uint64(last)}
}

func (s *Store) batchFailed(err error, ds []store.Diff, queued []int) error {
	first := &ds[queued[0]]
	return s.fail(err, "append %d diffs (the first: diff %d of escrow %d); none was stored", len(queued), first.Nonce, first.EscrowID)
}

// Diffs implements store.Diffs.
func (s *Store) Diffs(ctx context.Context, escrowID, from uint64, limit int) ([]store.Diff, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return nil, err
	}
	out := make([]store.Diff, 0, min(max(limit, 0), 1024))
	if limit <= 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT nonce, root, data FROM diffs WHERE epoch_id = $1 AND escrow_id = $2 AND nonce >= $3 ORDER BY nonce LIMIT $4",
		int64(epoch), int64(escrowID), int64(from), limit)
	if err != nil {
		return nil, s.fail(err, "read diffs of escrow %d", escrowID)
	}
	defer rows.Close()
	for rows.Next() {
		d := store.Diff{EscrowID: escrowID}
		var nonce int64
		if err := rows.Scan(&nonce, &d.Root, &d.Data); err != nil {
			return nil, s.fail(err, "read diffs of escrow %d", escrowID)
		}
		d.Nonce = uint64(nonce)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(err, "read diffs of escrow %d", escrowID)
	}
	return out, nil
}

// LastNonce implements store.Diffs.
func (s *Store) LastNonce(ctx context.Context, escrowID uint64) (uint64, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return 0, err
	}
	var last int64
	if err := s.pool.QueryRow(ctx, "SELECT COALESCE(MAX(nonce), 0) FROM diffs WHERE epoch_id = $1 AND escrow_id = $2",
		int64(epoch), int64(escrowID)).Scan(&last); err != nil {
		return 0, s.fail(err, "read the last nonce of escrow %d", escrowID)
	}
	return uint64(last), nil
}
