package hybrid

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/devshard/devshard/internal/sqlitedb"
	"github.com/devshard/devshard/store"
)

// TailFile is the local file that holds the tails: the diffs of
// Postgres-homed escrows written while Postgres was down.
const TailFile = "_tail.db"

// tails is the local store of tails. A tail continues an escrow whose
// history is in Postgres: it starts at base+1, where base is the last nonce
// Postgres was known to hold, and holds the diffs, their sealed rows and
// signatures, until they are copied into Postgres. Writes are serialized by
// the caller (Store.tailMu).
type tails struct {
	db   *sql.DB
	path string
}

// tailInfo is one tail's head row.
type tailInfo struct {
	epoch uint64
	base  uint64 // the last nonce Postgres held when the tail began
	last  uint64 // the tail's last nonce, base while it is empty
	snap  []byte // the marshalled escrow snapshot, to answer Session while Postgres is down
}

const tailSchema = `
CREATE TABLE IF NOT EXISTS tails (
	escrow_id INTEGER PRIMARY KEY,
	epoch     INTEGER NOT NULL,
	base      INTEGER NOT NULL,
	snapshot  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tail_diffs (
	escrow_id INTEGER NOT NULL,
	nonce     INTEGER NOT NULL,
	root      BLOB NOT NULL,
	data      BLOB NOT NULL,
	PRIMARY KEY (escrow_id, nonce)
);
CREATE TABLE IF NOT EXISTS tail_sealed (
	escrow_id    INTEGER NOT NULL,
	nonce        INTEGER NOT NULL,
	inference_id INTEGER NOT NULL,
	record       BLOB NOT NULL,
	PRIMARY KEY (escrow_id, inference_id)
);
CREATE TABLE IF NOT EXISTS postgres_high (
	one       INTEGER PRIMARY KEY CHECK (one = 1),
	escrow_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tail_sigs (
	escrow_id INTEGER NOT NULL,
	nonce     INTEGER NOT NULL,
	slot      INTEGER NOT NULL,
	data      BLOB NOT NULL,
	PRIMARY KEY (escrow_id, nonce, slot)
);`

func openTails(ctx context.Context, dir, synchronous string) (*tails, error) {
	path := filepath.Join(dir, TailFile)
	db := sqlitedb.Open(path, sqlitedb.Options{Synchronous: synchronous, MaxConns: 4})
	if _, err := db.ExecContext(ctx, tailSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open the hybrid tail file %s: %w", path, err)
	}
	return &tails{db: db, path: path}, nil
}

func (t *tails) close() error { return t.db.Close() }

// all returns every tail's head, by escrow.
func (t *tails) all(ctx context.Context) (map[uint64]tailInfo, error) {
	rows, err := t.db.QueryContext(ctx, `SELECT escrow_id, epoch, base, snapshot,
		(SELECT COALESCE(MAX(nonce), 0) FROM tail_diffs d WHERE d.escrow_id = t.escrow_id) FROM tails t`)
	if err != nil {
		return nil, fmt.Errorf("read the tails in %s: %w", t.path, err)
	}
	defer rows.Close()
	out := map[uint64]tailInfo{}
	for rows.Next() {
		var id, epoch, base, last int64
		var ti tailInfo
		if err := rows.Scan(&id, &epoch, &base, &ti.snap, &last); err != nil {
			return nil, fmt.Errorf("read the tails in %s: %w", t.path, err)
		}
		ti.epoch, ti.base, ti.last = uint64(epoch), uint64(base), uint64(max(base, last))
		out[uint64(id)] = ti
	}
	return out, rows.Err()
}

// begin records a new, empty tail of escrow id after base.
func (t *tails) begin(ctx context.Context, id uint64, ti tailInfo) error {
	_, err := t.db.ExecContext(ctx, "INSERT INTO tails (escrow_id, epoch, base, snapshot) VALUES (?, ?, ?, ?)",
		int64(id), int64(ti.epoch), int64(ti.base), ti.snap)
	if err != nil {
		return fmt.Errorf("begin the tail of escrow %d after nonce %d in %s: %w", id, ti.base, t.path, err)
	}
	return nil
}

// append stores ds, each the next nonce of its escrow's tail (checked by
// the caller), with their sealed rows and signatures, in one commit.
func (t *tails) append(ctx context.Context, ds []*store.Diff) error {
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, d := range ds {
		id, nonce := int64(d.EscrowID), int64(d.Nonce)
		if _, err := tx.ExecContext(ctx, "INSERT INTO tail_diffs (escrow_id, nonce, root, data) VALUES (?, ?, ?, ?)", id, nonce, d.Root, d.Data); err != nil {
			return err
		}
		for _, r := range d.Sealed {
			if _, err := tx.ExecContext(ctx, "INSERT OR REPLACE INTO tail_sealed (escrow_id, nonce, inference_id, record) VALUES (?, ?, ?, ?)",
				id, nonce, int64(r.InferenceID), r.Record); err != nil {
				return err
			}
		}
		for _, s := range d.Signatures {
			if _, err := tx.ExecContext(ctx, "INSERT OR IGNORE INTO tail_sigs (escrow_id, nonce, slot, data) VALUES (?, ?, ?, ?)",
				id, nonce, int64(s.Slot), s.Data); err != nil {
				return err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store %d diffs in the tail file %s: %w", len(ds), t.path, err)
	}
	return nil
}

// diff returns the tail's diff at nonce, or nil.
func (t *tails) diff(ctx context.Context, id, nonce uint64) (*store.Diff, error) {
	d := &store.Diff{EscrowID: id, Nonce: nonce}
	err := t.db.QueryRowContext(ctx, "SELECT root, data FROM tail_diffs WHERE escrow_id = ? AND nonce = ?", int64(id), int64(nonce)).Scan(&d.Root, &d.Data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read diff %d of escrow %d from the tail file %s: %w", nonce, id, t.path, err)
	}
	return d, nil
}

// diffs returns up to limit tail diffs of escrow id from nonce from, with
// their sealed rows and signatures when full is set.
func (t *tails) diffs(ctx context.Context, id, from uint64, limit int, full bool) ([]store.Diff, error) {
	out := []store.Diff{}
	if limit <= 0 {
		return out, nil
	}
	rows, err := t.db.QueryContext(ctx, "SELECT nonce, root, data FROM tail_diffs WHERE escrow_id = ? AND nonce >= ? ORDER BY nonce LIMIT ?",
		int64(id), int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read the tail of escrow %d from %s: %w", id, t.path, err)
	}
	for rows.Next() {
		d := store.Diff{EscrowID: id}
		var nonce int64
		if err := rows.Scan(&nonce, &d.Root, &d.Data); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the tail of escrow %d from %s: %w", id, t.path, err)
		}
		d.Nonce = uint64(nonce)
		out = append(out, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the tail of escrow %d from %s: %w", id, t.path, err)
	}
	if !full {
		return out, nil
	}
	for i := range out {
		d := &out[i]
		if d.Sealed, err = t.sealed(ctx, id, d.Nonce); err != nil {
			return nil, err
		}
		if d.Signatures, err = t.signatures(ctx, id, d.Nonce); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (t *tails) sealed(ctx context.Context, id, nonce uint64) ([]store.Sealed, error) {
	rows, err := t.db.QueryContext(ctx, "SELECT inference_id, record FROM tail_sealed WHERE escrow_id = ? AND nonce = ? ORDER BY inference_id", int64(id), int64(nonce))
	if err != nil {
		return nil, fmt.Errorf("read the tail's sealed rows of escrow %d at nonce %d: %w", id, nonce, err)
	}
	defer rows.Close()
	var out []store.Sealed
	for rows.Next() {
		r := store.Sealed{EscrowID: id, Nonce: nonce}
		var inf int64
		if err := rows.Scan(&inf, &r.Record); err != nil {
			return nil, err
		}
		r.InferenceID = uint64(inf)
		out = append(out, r)
	}
	return out, rows.Err()
}

// signatures returns the tail's signatures of escrow id at nonce, in slot
// order.
func (t *tails) signatures(ctx context.Context, id, nonce uint64) ([]store.Signature, error) {
	rows, err := t.db.QueryContext(ctx, "SELECT slot, data FROM tail_sigs WHERE escrow_id = ? AND nonce = ? ORDER BY slot", int64(id), int64(nonce))
	if err != nil {
		return nil, fmt.Errorf("read the tail's signatures of escrow %d at nonce %d: %w", id, nonce, err)
	}
	defer rows.Close()
	out := []store.Signature{}
	for rows.Next() {
		s := store.Signature{EscrowID: id, Nonce: nonce}
		var slot int64
		if err := rows.Scan(&slot, &s.Data); err != nil {
			return nil, err
		}
		s.Slot = uint32(slot)
		out = append(out, s)
	}
	return out, rows.Err()
}

// putSignature stores sig in the tail; another signature at its key is
// ErrConflict.
func (t *tails) putSignature(ctx context.Context, sig store.Signature) error {
	var stored []byte
	err := t.db.QueryRowContext(ctx, "SELECT data FROM tail_sigs WHERE escrow_id = ? AND nonce = ? AND slot = ?",
		int64(sig.EscrowID), int64(sig.Nonce), int64(sig.Slot)).Scan(&stored)
	switch {
	case err == nil && string(stored) == string(sig.Data):
		return nil
	case err == nil:
		return store.Errorf(store.ErrConflict, "escrow %d already has a different signature of slot %d at nonce %d; refusing to sign a second state there",
			sig.EscrowID, sig.Slot, sig.Nonce)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("read a signature of escrow %d from %s: %w", sig.EscrowID, t.path, err)
	}
	_, err = t.db.ExecContext(ctx, "INSERT INTO tail_sigs (escrow_id, nonce, slot, data) VALUES (?, ?, ?, ?)",
		int64(sig.EscrowID), int64(sig.Nonce), int64(sig.Slot), sig.Data)
	return err
}

// high is the recorded high-water mark of the escrow ids Postgres may
// hold; known is false until one was recorded.
func (t *tails) high(ctx context.Context) (id uint64, known bool, err error) {
	var v int64
	err = t.db.QueryRowContext(ctx, "SELECT escrow_id FROM postgres_high WHERE one = 1").Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("read the Postgres high-water mark from %s: %w", t.path, err)
	}
	return uint64(v), true, nil
}

// raiseHigh records id as the high-water mark unless a higher one is.
func (t *tails) raiseHigh(ctx context.Context, id uint64) error {
	_, err := t.db.ExecContext(ctx, `INSERT INTO postgres_high (one, escrow_id) VALUES (1, ?)
		ON CONFLICT (one) DO UPDATE SET escrow_id = MAX(escrow_id, excluded.escrow_id)`, int64(id))
	if err != nil {
		return fmt.Errorf("record the Postgres high-water mark in %s: %w", t.path, err)
	}
	return nil
}

// drop deletes escrow id's tail, once Postgres holds all of it.
func (t *tails) drop(ctx context.Context, id uint64) error {
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, q := range []string{"DELETE FROM tails WHERE escrow_id = ?", "DELETE FROM tail_diffs WHERE escrow_id = ?",
		"DELETE FROM tail_sealed WHERE escrow_id = ?", "DELETE FROM tail_sigs WHERE escrow_id = ?"} {
		if _, err := tx.ExecContext(ctx, q, int64(id)); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("drop the reconciled tail of escrow %d from %s: %w", id, t.path, err)
	}
	return nil
}
