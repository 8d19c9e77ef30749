// Package legacy moves a pre-epoch host database into the current store
// layout on first boot.
//
// The legacy database is one SQLite file holding a table of sessions and a
// table of diffs, with no epoch split (legacytest/testdata/schema.sql,
// where legacytest.Write generates such databases). Migrate copies
// every session into a store.Store, in the epoch a lookup gives it, replays
// each session's diffs through session.Apply (which checks every signature
// and root, and yields the sealed-inference index rows), and verifies per
// session that the diff count and the last root match what the legacy file
// recorded. Only then is the file renamed to <path>.migrated.<unix>.
//
// Migration is resumable and idempotent: the store's writes are idempotent
// and Migrate appends only past what the store already holds, so a crash
// midway is finished by the next boot, and once the file is renamed there is
// nothing left to do.
package legacy

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
)

// EpochOf returns the epoch of a legacy escrow, typically from the chain.
type EpochOf func(ctx context.Context, escrowID uint64, snap *sessionpb.EscrowSnapshot) (uint64, error)

// Progress is told, after each session, how many of the file's sessions
// are done; a large file takes a while, and an operator wants to see it move.
type Progress func(done, total int)

// Report is what a migration did.
type Report struct {
	// Sessions and Diffs were migrated and verified (including those a
	// resumed migration had stored before).
	Sessions, Diffs int
	// Pruned are escrows whose epoch the store has already pruned: their data
	// is dropped, as pruning would have dropped it.
	Pruned []uint64
	// RenamedTo is where the legacy file went; empty if there was none.
	RenamedTo string
}

// chunk is how many diffs are appended per batch.
const chunk = 256

// Migrate moves the legacy database at path into dst. If there is no file
// at path (never existed, or already migrated) it does nothing. On any
// error the legacy file stays in place, and running Migrate again resumes.
// progress may be nil.
func Migrate(ctx context.Context, path string, dst store.Store, epochOf EpochOf, progress Progress) (*Report, error) {
	rep := &Report{}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return rep, nil
	} else if err != nil {
		return nil, fmt.Errorf("legacy migration: %w", err)
	}
	db, err := sql.Open(sqlite.DriverName, path)
	if err != nil {
		return nil, fmt.Errorf("legacy migration: open %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "PRAGMA query_only = 1"); err != nil {
		return nil, fmt.Errorf("legacy migration: open %s: %w", path, err)
	}
	m := &migration{db: db, path: path, dst: dst, epochOf: epochOf}
	sessions, err := m.sessions(ctx)
	if err != nil {
		return nil, err
	}
	for i, ls := range sessions {
		n, err := m.session(ctx, ls)
		switch {
		case errors.Is(err, store.ErrEpochPruned):
			rep.Pruned = append(rep.Pruned, ls.id)
		case err != nil:
			return nil, fmt.Errorf("legacy migration of %s stopped at escrow %d (the file is left in place; the next run resumes): %w", path, ls.id, err)
		default:
			rep.Sessions++
			rep.Diffs += n
		}
		if progress != nil {
			progress(i+1, len(sessions))
		}
	}
	if err := m.checkTotals(ctx, rep); err != nil {
		return nil, err
	}
	if err := db.Close(); err != nil {
		return nil, fmt.Errorf("legacy migration: close %s: %w", path, err)
	}
	if rep.RenamedTo, err = retire(path); err != nil {
		return nil, err
	}
	return rep, nil
}

type migration struct {
	db      *sql.DB
	path    string
	dst     store.Store
	epochOf EpochOf
}

// legacySession is one row of the legacy sessions table.
type legacySession struct {
	id    uint64
	snap  *sessionpb.EscrowSnapshot
	nonce uint64
	root  []byte
}

func (m *migration) sessions(ctx context.Context) ([]legacySession, error) {
	rows, err := m.db.QueryContext(ctx, "SELECT escrow_id, snapshot, nonce, root FROM sessions ORDER BY escrow_id")
	if err != nil {
		return nil, fmt.Errorf("legacy migration: %s does not look like a legacy host database (%v); see store/legacy/legacytest/testdata/schema.sql", m.path, err)
	}
	defer rows.Close()
	var out []legacySession
	for rows.Next() {
		var id, nonce int64
		var snap, root []byte
		if err := rows.Scan(&id, &snap, &nonce, &root); err != nil {
			return nil, fmt.Errorf("legacy migration: read sessions of %s: %w", m.path, err)
		}
		var es sessionpb.EscrowSnapshot
		if err := es.Unmarshal(snap); err != nil {
			return nil, fmt.Errorf("legacy migration: escrow %d in %s has an escrow snapshot that does not decode: %w", id, m.path, err)
		}
		out = append(out, legacySession{id: uint64(id), snap: &es, nonce: uint64(nonce), root: root})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("legacy migration: read sessions of %s: %w", m.path, err)
	}
	return out, nil
}

// session migrates one session and verifies it. It replays the legacy
// diffs from nonce 1 (the replay is the verification, and it yields the
// index rows) and appends those past what dst already holds. It returns the
// number of diffs.
func (m *migration) session(ctx context.Context, ls legacySession) (int, error) {
	epoch, err := m.epochOf(ctx, ls.id, ls.snap)
	if err != nil {
		return 0, fmt.Errorf("look up its epoch: %w", err)
	}
	snap := *ls.snap
	snap.Epoch = epoch
	if err := m.dst.CreateSession(ctx, &snap); err != nil {
		return 0, err
	}
	stored, err := m.dst.LastNonce(ctx, ls.id)
	if err != nil {
		return 0, err
	}
	replica, err := session.New(&snap, nil)
	if err != nil {
		return 0, fmt.Errorf("its escrow snapshot does not start a session: %w", err)
	}
	var batch []store.Diff
	flush := func() error {
		err := m.dst.AppendDiffs(ctx, batch)
		batch = batch[:0]
		return err
	}
	rows, err := m.db.QueryContext(ctx, "SELECT nonce, data FROM diffs WHERE escrow_id = ? ORDER BY nonce", int64(ls.id))
	if err != nil {
		return 0, fmt.Errorf("read its diffs: %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var nonce int64
		var data []byte
		if err := rows.Scan(&nonce, &data); err != nil {
			return n, fmt.Errorf("read its diffs: %w", err)
		}
		var d sessionpb.Diff
		if err := d.Unmarshal(data); err != nil {
			return n, fmt.Errorf("diff %d does not decode: %w", nonce, err)
		}
		if uint64(nonce) != d.Nonce || d.EscrowId != ls.id {
			return n, fmt.Errorf("diff filed as nonce %d holds diff %d of escrow %d", nonce, d.Nonce, d.EscrowId)
		}
		res, err := replica.Apply(&d)
		if err != nil {
			return n, fmt.Errorf("legacy diff %d does not apply: %w", nonce, err)
		}
		n++
		if d.Nonce <= stored {
			continue // migrated by an earlier run
		}
		rowsSealed, err := store.SealedRows(ls.id, d.Nonce, res.Sealed)
		if err != nil {
			return n, err
		}
		batch = append(batch, store.Diff{EscrowID: ls.id, Nonce: d.Nonce, Root: d.PostStateRoot, Data: data, Sealed: rowsSealed})
		if len(batch) == chunk {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("read its diffs: %w", err)
	}
	if err := flush(); err != nil {
		return n, err
	}
	return n, m.verify(ctx, ls, replica, n)
}

// verify checks a migrated session against what the legacy file recorded:
// the diff count, and the last root, both as replayed and as stored.
func (m *migration) verify(ctx context.Context, ls legacySession, replica *session.Session, n int) error {
	root := replica.Root()
	switch {
	case uint64(n) != ls.nonce:
		return fmt.Errorf("verification failed: the legacy file records nonce %d but holds %d diffs", ls.nonce, n)
	case !bytes.Equal(root[:], ls.root):
		return fmt.Errorf("verification failed: replaying the legacy diffs gives root %x…, the legacy file records %x…", root[:4], ls.root[:min(4, len(ls.root))])
	}
	last, err := m.dst.LastNonce(ctx, ls.id)
	if err != nil {
		return err
	}
	if last != ls.nonce {
		return fmt.Errorf("verification failed: the store holds %d diffs, the legacy file %d", last, ls.nonce)
	}
	if last == 0 {
		return nil
	}
	tail, err := m.dst.Diffs(ctx, ls.id, last, 1)
	if err != nil {
		return err
	}
	if len(tail) != 1 || !bytes.Equal(tail[0].Root, ls.root) {
		return fmt.Errorf("verification failed: the store's last diff does not commit to the legacy root %x…", ls.root[:min(4, len(ls.root))])
	}
	return nil
}

// checkTotals compares the legacy file's row counts with the report.
func (m *migration) checkTotals(ctx context.Context, rep *Report) error {
	var sessions, diffs, prunedDiffs int
	if err := m.db.QueryRowContext(ctx, "SELECT count(*) FROM sessions").Scan(&sessions); err != nil {
		return fmt.Errorf("legacy migration: count sessions: %w", err)
	}
	if err := m.db.QueryRowContext(ctx, "SELECT count(*) FROM diffs").Scan(&diffs); err != nil {
		return fmt.Errorf("legacy migration: count diffs: %w", err)
	}
	for _, id := range rep.Pruned {
		var n int
		if err := m.db.QueryRowContext(ctx, "SELECT count(*) FROM diffs WHERE escrow_id = ?", int64(id)).Scan(&n); err != nil {
			return fmt.Errorf("legacy migration: count diffs: %w", err)
		}
		prunedDiffs += n
	}
	if sessions != rep.Sessions+len(rep.Pruned) || diffs != rep.Diffs+prunedDiffs {
		return fmt.Errorf("legacy migration of %s failed verification: it holds %d sessions and %d diffs, %d and %d were accounted for",
			m.path, sessions, diffs, rep.Sessions+len(rep.Pruned), rep.Diffs+prunedDiffs)
	}
	return nil
}

// retire renames the legacy file (and any WAL files beside it) to
// <path>.migrated.<unix>.
func retire(path string) (string, error) {
	to := path + ".migrated." + strconv.FormatInt(time.Now().Unix(), 10)
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Rename(path+suffix, to+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("legacy migration: retire %s: %w", path+suffix, err)
		}
	}
	if err := os.Rename(path, to); err != nil {
		return "", fmt.Errorf("legacy migration: retire %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return "", err
	}
	defer d.Close()
	return to, d.Sync()
}
