package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

// The epoch file's statements. Keys are int64 bit casts of uint64 values.
const (
	qDiffAt     = "SELECT root, data FROM diffs WHERE escrow_id = ? AND nonce = ?"
	qHasDiff    = "SELECT 1 FROM diffs WHERE escrow_id = ? AND nonce = ?"
	qLastNonce  = "SELECT COALESCE(MAX(nonce), 0) FROM diffs WHERE escrow_id = ?"
	qInsertDiff = "INSERT INTO diffs (escrow_id, nonce, root, data) VALUES (?, ?, ?, ?)"
	qPutSealed  = "INSERT OR REPLACE INTO sealed (escrow_id, inference_id, nonce, record) VALUES (?, ?, ?, ?)"
	// A diff's own signatures: none can exist at a nonce whose diff is new,
	// and a stored one is never overwritten.
	qDiffSig = "INSERT INTO signatures (escrow_id, nonce, slot, data) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
	qDiffs   = "SELECT nonce, root, data FROM diffs WHERE escrow_id = ? AND nonce >= ? ORDER BY nonce LIMIT ?"
)

// writeStmts are the append path's statements, prepared once on the
// writer connection.
type writeStmts struct {
	diffAt, hasDiff, lastNonce, insertDiff, putSealed, diffSig *sql.Stmt
}

func prepareWrites(ctx context.Context, db *sql.DB) (*writeStmts, error) {
	var st writeStmts
	for _, p := range []struct {
		dst **sql.Stmt
		q   string
	}{
		{&st.diffAt, qDiffAt}, {&st.hasDiff, qHasDiff}, {&st.lastNonce, qLastNonce},
		{&st.insertDiff, qInsertDiff}, {&st.putSealed, qPutSealed}, {&st.diffSig, qDiffSig},
	} {
		s, err := db.PrepareContext(ctx, p.q)
		if err != nil {
			st.close()
			return nil, err
		}
		*p.dst = s
	}
	return &st, nil
}

// in returns the statements bound to tx.
func (st *writeStmts) in(ctx context.Context, tx *sql.Tx) *writeStmts {
	return &writeStmts{
		diffAt:     tx.StmtContext(ctx, st.diffAt),
		hasDiff:    tx.StmtContext(ctx, st.hasDiff),
		lastNonce:  tx.StmtContext(ctx, st.lastNonce),
		insertDiff: tx.StmtContext(ctx, st.insertDiff),
		putSealed:  tx.StmtContext(ctx, st.putSealed),
		diffSig:    tx.StmtContext(ctx, st.diffSig),
	}
}

func (st *writeStmts) close() {
	for _, s := range []*sql.Stmt{st.diffAt, st.hasDiff, st.lastNonce, st.insertDiff, st.putSealed, st.diffSig} {
		if s != nil {
			s.Close()
		}
	}
}

// readStmts are the hot read statements, prepared on the read pool.
type readStmts struct {
	diffs, lastNonce *sql.Stmt
}

func prepareReads(ctx context.Context, db *sql.DB) (*readStmts, error) {
	diffs, err := db.PrepareContext(ctx, qDiffs)
	if err != nil {
		return nil, err
	}
	last, err := db.PrepareContext(ctx, qLastNonce)
	if err != nil {
		diffs.Close()
		return nil, err
	}
	return &readStmts{diffs: diffs, lastNonce: last}, nil
}

func (st *readStmts) close() {
	st.diffs.Close()
	st.lastNonce.Close()
}

func (e *epochDB) putSession(ctx context.Context, id uint64, snapshot []byte) error {
	_, err := e.w.ExecContext(ctx, "INSERT OR REPLACE INTO sessions (escrow_id, snapshot, created_at) VALUES (?, ?, ?)",
		int64(id), snapshot, time.Now().Unix())
	return err
}

func (e *epochDB) snapshotBytes(ctx context.Context, id uint64) ([]byte, error) {
	var b []byte
	err := e.r.QueryRowContext(ctx, "SELECT snapshot FROM sessions WHERE escrow_id = ?", int64(id)).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("read session of escrow %d from %s: %w", id, e.path, err)
	}
	return b, nil
}

func (e *epochDB) session(ctx context.Context, id uint64) (*store.Session, error) {
	var snap []byte
	var last int64
	err := e.r.QueryRowContext(ctx,
		"SELECT snapshot, (SELECT COALESCE(MAX(nonce), 0) FROM diffs WHERE escrow_id = s.escrow_id) FROM sessions s WHERE escrow_id = ?",
		int64(id)).Scan(&snap, &last)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("read session of escrow %d from %s: %w", id, e.path, err)
	}
	return decodeSession(id, e.epoch, snap, last)
}

func decodeSession(id, epoch uint64, snap []byte, last int64) (*store.Session, error) {
	var es sessionpb.EscrowSnapshot
	if err := es.Unmarshal(snap); err != nil {
		return nil, fmt.Errorf("stored escrow snapshot of escrow %d does not decode: %w", id, err)
	}
	return &store.Session{EscrowID: id, Epoch: epoch, Snapshot: &es, LastNonce: uint64(last)}, nil
}

func (e *epochDB) sessions(ctx context.Context) ([]*store.Session, error) {
	rows, err := e.r.QueryContext(ctx,
		"SELECT escrow_id, snapshot, (SELECT COALESCE(MAX(nonce), 0) FROM diffs d WHERE d.escrow_id = s.escrow_id) FROM sessions s")
	if err != nil {
		return nil, fmt.Errorf("list sessions in %s: %w", e.path, err)
	}
	defer rows.Close()
	var out []*store.Session
	for rows.Next() {
		var id, last int64
		var snap []byte
		if err := rows.Scan(&id, &snap, &last); err != nil {
			return nil, fmt.Errorf("list sessions in %s: %w", e.path, err)
		}
		s, err := decodeSession(uint64(id), e.epoch, snap, last)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sessions in %s: %w", e.path, err)
	}
	return out, nil
}

// appendDiffs stores ds[i] for i in idx in one transaction and sets errs[i]
// for each diff refused. It returns an error, and stores nothing, if the
// transaction itself fails.
func (e *epochDB) appendDiffs(ctx context.Context, ds []store.Diff, idx []int, errs []error) error {
	tx, err := e.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	st := e.writes.in(ctx, tx)
	defer st.close()
	for _, i := range idx {
		refused, err := st.appendOne(ctx, &ds[i])
		if err != nil {
			return err
		}
		errs[i] = refused
	}
	return tx.Commit()
}

// appendOne checks d against the stored chain and inserts it. It returns
// the reason d is refused (fork, gap) as its first result; its second
// result is a failure of the transaction.
func (st *writeStmts) appendOne(ctx context.Context, d *store.Diff) (refused, err error) {
	id, nonce := int64(d.EscrowID), int64(d.Nonce)
	var root, data []byte
	err = st.diffAt.QueryRowContext(ctx, id, nonce).Scan(&root, &data)
	switch {
	case err == nil:
		if store.SameDiff(root, data, d) {
			return nil, nil // replay
		}
		return store.NewForkError(d.EscrowID, d.Nonce, data, d.Data), nil
	case !errors.Is(err, sql.ErrNoRows):
		return nil, err
	}
	if d.Nonce > 1 {
		var one int
		err := st.hasDiff.QueryRowContext(ctx, id, nonce-1).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			var last int64
			if err := st.lastNonce.QueryRowContext(ctx, id).Scan(&last); err != nil {
				return nil, err
			}
			return &store.GapError{EscrowID: d.EscrowID, Nonce: d.Nonce, Last: uint64(last)}, nil
		}
		if err != nil {
			return nil, err
		}
	}
	if _, err := st.insertDiff.ExecContext(ctx, id, nonce, d.Root, d.Data); err != nil {
		return nil, err
	}
	for _, r := range d.Sealed {
		if _, err := st.putSealed.ExecContext(ctx, id, int64(r.InferenceID), nonce, r.Record); err != nil {
			return nil, err
		}
	}
	for _, s := range d.Signatures {
		if _, err := st.diffSig.ExecContext(ctx, id, nonce, int64(s.Slot), s.Data); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func (e *epochDB) diffs(ctx context.Context, id, from uint64, limit int) ([]store.Diff, error) {
	if limit <= 0 {
		return []store.Diff{}, nil
	}
	rows, err := e.reads.diffs.QueryContext(ctx, int64(id), int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read diffs of escrow %d from %s: %w", id, e.path, err)
	}
	defer rows.Close()
	out := make([]store.Diff, 0, min(limit, 1024))
	for rows.Next() {
		d := store.Diff{EscrowID: id}
		var nonce int64
		if err := rows.Scan(&nonce, &d.Root, &d.Data); err != nil {
			return nil, fmt.Errorf("read diffs of escrow %d from %s: %w", id, e.path, err)
		}
		d.Nonce = uint64(nonce)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read diffs of escrow %d from %s: %w", id, e.path, err)
	}
	return out, nil
}

func (e *epochDB) lastNonce(ctx context.Context, id uint64) (uint64, error) {
	var last int64
	if err := e.reads.lastNonce.QueryRowContext(ctx, int64(id)).Scan(&last); err != nil {
		return 0, fmt.Errorf("read the last nonce of escrow %d from %s: %w", id, e.path, err)
	}
	return uint64(last), nil
}

func (e *epochDB) putSignature(ctx context.Context, sig store.Signature) error {
	tx, err := e.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var stored []byte
	err = tx.QueryRowContext(ctx, "SELECT data FROM signatures WHERE escrow_id = ? AND nonce = ? AND slot = ?",
		int64(sig.EscrowID), int64(sig.Nonce), int64(sig.Slot)).Scan(&stored)
	switch {
	case err == nil:
		if string(stored) == string(sig.Data) {
			return nil
		}
		return store.Errorf(store.ErrConflict, "escrow %d already has a different signature of slot %d at nonce %d; refusing to sign a second state there",
			sig.EscrowID, sig.Slot, sig.Nonce)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("store signature of escrow %d at nonce %d in %s: %w", sig.EscrowID, sig.Nonce, e.path, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO signatures (escrow_id, nonce, slot, data) VALUES (?, ?, ?, ?)",
		int64(sig.EscrowID), int64(sig.Nonce), int64(sig.Slot), sig.Data); err != nil {
		return fmt.Errorf("store signature of escrow %d at nonce %d in %s: %w", sig.EscrowID, sig.Nonce, e.path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store signature of escrow %d at nonce %d in %s: %w", sig.EscrowID, sig.Nonce, e.path, err)
	}
	return nil
}

func (e *epochDB) signatures(ctx context.Context, id, nonce uint64) ([]store.Signature, error) {
	rows, err := e.r.QueryContext(ctx, "SELECT slot, data FROM signatures WHERE escrow_id = ? AND nonce = ? ORDER BY slot",
		int64(id), int64(nonce))
	if err != nil {
		return nil, fmt.Errorf("read signatures of escrow %d at nonce %d from %s: %w", id, nonce, e.path, err)
	}
	defer rows.Close()
	out := []store.Signature{}
	for rows.Next() {
		sig := store.Signature{EscrowID: id, Nonce: nonce}
		var slot int64
		if err := rows.Scan(&slot, &sig.Data); err != nil {
			return nil, fmt.Errorf("read signatures of escrow %d at nonce %d from %s: %w", id, nonce, e.path, err)
		}
		sig.Slot = uint32(slot)
		out = append(out, sig)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read signatures of escrow %d at nonce %d from %s: %w", id, nonce, e.path, err)
	}
	return out, nil
}

func (e *epochDB) putSnapshot(ctx context.Context, snap store.Snapshot) error {
	_, err := e.w.ExecContext(ctx, `
		INSERT INTO snapshots (escrow_id, nonce, root, state) VALUES (?, ?, ?, ?)
		ON CONFLICT (escrow_id) DO UPDATE SET nonce = excluded.nonce, root = excluded.root, state = excluded.state
		WHERE excluded.nonce > snapshots.nonce`,
		int64(snap.EscrowID), int64(snap.Nonce), snap.Root, snap.State)
	if err != nil {
		return fmt.Errorf("store snapshot of escrow %d at nonce %d in %s: %w", snap.EscrowID, snap.Nonce, e.path, err)
	}
	return nil
}

func (e *epochDB) snapshot(ctx context.Context, id uint64) (store.Snapshot, error) {
	snap := store.Snapshot{EscrowID: id}
	var nonce int64
	err := e.r.QueryRowContext(ctx, "SELECT nonce, root, state FROM snapshots WHERE escrow_id = ?", int64(id)).
		Scan(&nonce, &snap.Root, &snap.State)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Snapshot{}, store.Errorf(store.ErrNotFound, "escrow %d has no snapshot yet", id)
	}
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("read snapshot of escrow %d from %s: %w", id, e.path, err)
	}
	snap.Nonce = uint64(nonce)
	return snap, nil
}

func (e *epochDB) indexSealed(ctx context.Context, rows []store.Sealed) error {
	tx, err := e.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	put := tx.StmtContext(ctx, e.writes.putSealed)
	defer put.Close()
	for _, r := range rows {
		if _, err := put.ExecContext(ctx, int64(r.EscrowID), int64(r.InferenceID), int64(r.Nonce), r.Record); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (e *epochDB) sealed(ctx context.Context, id uint64) ([]store.Sealed, error) {
	rows, err := e.r.QueryContext(ctx, "SELECT inference_id, nonce, record FROM sealed WHERE escrow_id = ? ORDER BY inference_id", int64(id))
	if err != nil {
		return nil, fmt.Errorf("read the sealed index of escrow %d from %s: %w", id, e.path, err)
	}
	defer rows.Close()
	out := []store.Sealed{}
	for rows.Next() {
		r := store.Sealed{EscrowID: id}
		var inf, nonce int64
		if err := rows.Scan(&inf, &nonce, &r.Record); err != nil {
			return nil, fmt.Errorf("read the sealed index of escrow %d from %s: %w", id, e.path, err)
		}
		r.InferenceID, r.Nonce = uint64(inf), uint64(nonce)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the sealed index of escrow %d from %s: %w", id, e.path, err)
	}
	return out, nil
}
