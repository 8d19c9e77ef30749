package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/devshard/devshard/internal/sqlitedb"
)

// metaSchema is the schema of _meta.db, the routing index. epochs records
// every epoch the store has seen and whether it was pruned; route_<N>
// tables (one per live epoch, created with it) list the escrows of epoch N.
// A route row is written only after the session row is durable in the epoch
// file, so it is the commit point of CreateSession. Keeping one route table
// per epoch makes pruning a DROP TABLE, whatever the epoch held.
const metaSchema = `
CREATE TABLE IF NOT EXISTS epochs (
	epoch_id   INTEGER PRIMARY KEY,
	state      TEXT NOT NULL CHECK (state IN ('live', 'pruning', 'pruned')),
	changed_at INTEGER NOT NULL
);
PRAGMA user_version = 1;
`

// Epoch states in the epochs table. An epoch is 'pruning' between marking
// and the deletion of its files, so a crash in between finishes on the next
// Open.
const (
	stateLive    = "live"
	statePruning = "pruning"
	statePruned  = "pruned"
)

const metaFile = "_meta.db"

func routeTable(epoch uint64) string { return "route_" + strconv.FormatUint(epoch, 10) }

// meta is the _meta.db file. One connection: it is written only by
// CreateSession, PrepareEpoch and Prune, which the store serializes.
type meta struct {
	db *sql.DB
}

func openMeta(ctx context.Context, dir string, opts Options) (*meta, error) {
	path := filepath.Join(dir, metaFile)
	db := sqlitedb.Open(path, sqlitedb.Options{Synchronous: opts.Synchronous})
	if _, err := db.ExecContext(ctx, metaSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("create the schema of %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		db.Close()
		return nil, fmt.Errorf("sync %s: %w", dir, err)
	}
	return &meta{db: db}, nil
}

// epochStates returns every epoch's state.
func (m *meta) epochStates(ctx context.Context) (map[uint64]string, error) {
	rows, err := m.db.QueryContext(ctx, "SELECT epoch_id, state FROM epochs")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uint64]string{}
	for rows.Next() {
		var e int64
		var st string
		if err := rows.Scan(&e, &st); err != nil {
			return nil, err
		}
		out[uint64(e)] = st
	}
	return out, rows.Err()
}

// routes returns the escrows routed to epoch.
func (m *meta) routes(ctx context.Context, epoch uint64) (map[uint64]struct{}, error) {
	rows, err := m.db.QueryContext(ctx, "SELECT escrow_id FROM "+routeTable(epoch))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uint64]struct{}{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[uint64(id)] = struct{}{}
	}
	return out, rows.Err()
}

// addEpoch records epoch as live and creates its route table.
func (m *meta) addEpoch(ctx context.Context, epoch uint64) error {
	return m.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx,
			"INSERT INTO epochs (epoch_id, state, changed_at) VALUES (?, ?, ?) ON CONFLICT (epoch_id) DO NOTHING",
			int64(epoch), stateLive, time.Now().Unix()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+routeTable(epoch)+" (escrow_id INTEGER PRIMARY KEY)")
		return err
	})
}

// addRoute routes escrowID to epoch.
func (m *meta) addRoute(ctx context.Context, epoch, escrowID uint64) error {
	_, err := m.db.ExecContext(ctx, "INSERT OR IGNORE INTO "+routeTable(epoch)+" (escrow_id) VALUES (?)", int64(escrowID))
	return err
}

// setState moves epoch to state, creating its row if needed.
func (m *meta) setState(ctx context.Context, epoch uint64, state string) error {
	_, err := m.db.ExecContext(ctx,
		"INSERT INTO epochs (epoch_id, state, changed_at) VALUES (?, ?, ?) ON CONFLICT (epoch_id) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at",
		int64(epoch), state, time.Now().Unix())
	return err
}

// finishPrune drops epoch's route table and marks it pruned.
func (m *meta) finishPrune(ctx context.Context, epoch uint64) error {
	return m.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "DROP TABLE IF EXISTS "+routeTable(epoch)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE epochs SET state = ?, changed_at = ? WHERE epoch_id = ?",
			statePruned, time.Now().Unix(), int64(epoch))
		return err
	})
}

func (m *meta) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (m *meta) close() error { return m.db.Close() }
