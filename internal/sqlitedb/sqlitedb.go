// Package sqlitedb opens SQLite files the one way devshard opens them: the
// same driver, chosen at build time, and the same connection settings. The
// host's store (store/sqlite) and the gateway's state file both open their
// databases here, so neither carries the other's code and both keep the
// durability the protocol relies on.
package sqlitedb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync"
)

// Options says how to open a pool.
type Options struct {
	// Synchronous is SQLite's durability level, FULL or NORMAL (see
	// Pragmas). Empty means FULL.
	Synchronous string
	// ReadOnly refuses writes on every connection of the pool.
	ReadOnly bool
	// MaxConns is the pool size (default 1: one writer per file).
	MaxConns int
}

// Open opens a pool on the SQLite file at path, creating the file if it is
// missing. Every connection the pool opens gets Pragmas first. Like
// sql.OpenDB, it does not touch the file: a bad path shows on first use.
func Open(path string, opts Options) *sql.DB {
	if opts.Synchronous == "" {
		opts.Synchronous = "FULL"
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 1
	}
	db := sql.OpenDB(&connector{drv: sqliteDriver(), dsn: path, pragmas: Pragmas(opts.Synchronous, opts.ReadOnly)})
	db.SetMaxOpenConns(opts.MaxConns)
	db.SetMaxIdleConns(opts.MaxConns)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	return db
}

// Pragmas are the connection settings, applied to every connection a pool
// opens. They are issued as PRAGMAs rather than DSN options so both drivers
// read them the same way.
//
//   - journal_mode=WAL: a commit appends to the write-ahead log instead of
//     rewriting pages, and readers never block the writer or each other.
//   - synchronous=FULL (default): the WAL is fsynced at every commit, so a
//     diff the store acknowledged survives power loss, not only a process
//     crash. NORMAL (fsync only at checkpoints) is faster but may lose the
//     last commits on power loss: a host could then sign a second diff at a
//     nonce it had already signed, so it is not the default.
//   - busy_timeout=5000: waits on a lock instead of failing; within one
//     process there is a single writer per file, so this only matters for
//     tools reading the files.
//   - journal_size_limit: truncates the WAL after checkpoints so an idle
//     epoch file does not keep a large log.
//   - foreign_keys=OFF, temp_store=MEMORY: no foreign keys are used; sorts
//     for small index queries stay in memory.
func Pragmas(synchronous string, readOnly bool) []string {
	p := []string{
		"PRAGMA busy_timeout = 5000",
		"PRAGMA journal_mode = WAL",
		"PRAGMA synchronous = " + synchronous,
		"PRAGMA journal_size_limit = 67108864",
		"PRAGMA foreign_keys = OFF",
		"PRAGMA temp_store = MEMORY",
	}
	if readOnly {
		p = append(p, "PRAGMA query_only = 1")
	}
	return p
}

// connector opens driver connections and applies pragmas to each.
type connector struct {
	drv     driver.Driver
	dsn     string
	pragmas []string
}

var sqliteDriver = sync.OnceValue(func() driver.Driver {
	db, err := sql.Open(DriverName, "")
	if err != nil {
		panic(fmt.Sprintf("sqlite driver %q is not registered: %v", DriverName, err))
	}
	defer db.Close()
	return db.Driver()
})

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	ex, ok := conn.(driver.ExecerContext)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("sqlite driver %q cannot execute statements on a raw connection", DriverName)
	}
	for _, p := range c.pragmas {
		if _, err := ex.ExecContext(ctx, p, nil); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%s on %s: %w", p, c.dsn, err)
		}
	}
	return conn, nil
}

func (c *connector) Driver() driver.Driver { return c.drv }
