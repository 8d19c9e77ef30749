package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/devshard/devshard/internal/sqlitedb"
)

// epochSchema is the schema of an epoch_<N>.db file. Keys are int64 bit
// casts of the protocol's uint64 values.
const epochSchema = `
CREATE TABLE IF NOT EXISTS sessions (
	escrow_id  INTEGER PRIMARY KEY,
	snapshot   BLOB NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS diffs (
	escrow_id INTEGER NOT NULL,
	nonce     INTEGER NOT NULL,
	root      BLOB NOT NULL,
	data      BLOB NOT NULL,
	PRIMARY KEY (escrow_id, nonce)
);
CREATE TABLE IF NOT EXISTS signatures (
	escrow_id INTEGER NOT NULL,
	nonce     INTEGER NOT NULL,
	slot      INTEGER NOT NULL,
	data      BLOB NOT NULL,
	PRIMARY KEY (escrow_id, nonce, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
	escrow_id INTEGER PRIMARY KEY,
	nonce     INTEGER NOT NULL,
	root      BLOB NOT NULL,
	state     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sealed (
	escrow_id    INTEGER NOT NULL,
	inference_id INTEGER NOT NULL,
	nonce        INTEGER NOT NULL,
	record       BLOB NOT NULL,
	PRIMARY KEY (escrow_id, inference_id)
) WITHOUT ROWID;
PRAGMA user_version = 1;
`

// epochDB is one epoch_<N>.db file: a single-connection writer pool, so
// writes to the file are serialized without SQLITE_BUSY, and a read pool.
type epochDB struct {
	epoch  uint64
	path   string
	w      *sql.DB
	r      *sql.DB
	writes *writeStmts
	reads  *readStmts

	// mu is held shared by every operation on the file and exclusively by
	// prune, which so waits for operations in flight before closing it.
	mu     sync.RWMutex
	closed bool
}

func epochFile(dir string, epoch uint64) string {
	return filepath.Join(dir, "epoch_"+strconv.FormatUint(epoch, 10)+".db")
}

// openEpoch opens (creating if needed) the file of epoch and its schema.
func openEpoch(ctx context.Context, dir string, epoch uint64, opts Options) (*epochDB, error) {
	path := epochFile(dir, epoch)
	_, statErr := os.Stat(path)
	e := &epochDB{
		epoch: epoch,
		path:  path,
		w:     sqlitedb.Open(path, sqlitedb.Options{Synchronous: opts.Synchronous}),
		r:     sqlitedb.Open(path, sqlitedb.Options{Synchronous: opts.Synchronous, ReadOnly: true, MaxConns: opts.Readers}),
	}
	if _, err := e.w.ExecContext(ctx, epochSchema); err != nil {
		e.close()
		return nil, fmt.Errorf("create the schema of %s: %w", path, err)
	}
	var err error
	if errors.Is(statErr, os.ErrNotExist) {
		// A new file's directory entry must be durable too, or a power loss
		// could drop the file with its fsynced commits.
		err = syncDir(dir)
	}
	if err == nil {
		if e.writes, err = prepareWrites(ctx, e.w); err == nil {
			e.reads, err = prepareReads(ctx, e.r)
		}
	}
	if err != nil {
		e.close()
		return nil, fmt.Errorf("prepare statements on %s: %w", path, err)
	}
	return e, nil
}

// acquire takes the file for one operation; release with e.mu.RUnlock.
func (e *epochDB) acquire() bool {
	e.mu.RLock()
	if e.closed {
		e.mu.RUnlock()
		return false
	}
	return true
}

// close closes the pools. The readers go first, so the writer is the last
// connection and the only one to checkpoint.
func (e *epochDB) close() error {
	e.closeStmts()
	return errors.Join(e.r.Close(), e.w.Close())
}

func (e *epochDB) closeStmts() {
	if e.writes != nil {
		e.writes.close()
	}
	if e.reads != nil {
		e.reads.close()
	}
}

// closeForDelete closes the pools of a file about to be deleted. Turning
// synchronous off first keeps the close-time checkpoint from fsyncing data
// that is deleted right after, so pruning costs the same however much the
// epoch held.
func (e *epochDB) closeForDelete(ctx context.Context) error {
	e.closeStmts()
	rerr := e.r.Close()
	if _, err := e.w.ExecContext(ctx, "PRAGMA synchronous = OFF"); err != nil {
		return errors.Join(rerr, err, e.w.Close())
	}
	return errors.Join(rerr, e.w.Close())
}

// trashDir holds the files of pruned epochs until the reclaimer deletes
// them.
const trashDir = "_trash"

// retireEpochFiles moves the database file of epoch, with its WAL and
// shared-memory files, into the trash directory and makes the move durable.
// A rename costs the same whatever the file holds; unlinking does not (the
// kernel frees every cached page and extent), so the unlink happens later,
// off the prune path, in the reclaimer.
func retireEpochFiles(dir string, epoch uint64) error {
	trash := filepath.Join(dir, trashDir)
	if err := os.MkdirAll(trash, 0o755); err != nil {
		return err
	}
	path := epochFile(dir, epoch)
	stamp := "." + strconv.FormatInt(time.Now().UnixNano(), 10)
	moved := false
	for _, p := range []string{path + "-wal", path + "-shm", path} {
		err := os.Rename(p, filepath.Join(trash, filepath.Base(p)+stamp))
		switch {
		case err == nil:
			moved = true
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
	}
	if !moved {
		return nil
	}
	return syncDir(dir)
}

// emptyTrash deletes every file in the trash directory.
func emptyTrash(dir string) error {
	trash := filepath.Join(dir, trashDir)
	entries, err := os.ReadDir(trash)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if err := os.Remove(filepath.Join(trash, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
