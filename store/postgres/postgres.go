// Package postgres is the store driver for large operators: PostgreSQL via
// pgx, selected when PGHOST is set (the standard PG* variables configure
// it).
//
// Every table keyed by an escrow is PARTITION BY RANGE (epoch_id), with one
// partition per epoch, created on first use or ahead of the epoch
// (PrepareEpoch) under an advisory lock, so concurrent creators are safe.
// Pruning drops the epoch's partitions, which it finds in the catalog
// (pg_partitioned_table, pg_inherits): any table partitioned by epoch_id is
// pruned, including ones added by later migrations.
//
// Durability: a write returns once its transaction has committed, with the
// server's synchronous_commit (on by default: the WAL is flushed at commit).
// Each operation runs under a short timeout, and a server that cannot be
// reached gives store.ErrUnavailable instead of a hang.
//
// Migrations are embedded SQL (migrations/), applied by goose under a
// Postgres advisory lock, so hosts starting together migrate once.
package postgres

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devshard/devshard/store"
)

// Config configures a Store. The zero value reads the PG* environment.
type Config struct {
	// DSN is a libpq connection string or URL. Empty means the standard
	// PG* environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...).
	DSN string
	// OpTimeout bounds each operation (default 5s), so an unreachable
	// server fails fast with store.ErrUnavailable.
	OpTimeout time.Duration
	// ConnectTimeout bounds opening a connection (default 3s).
	ConnectTimeout time.Duration
	// MaxConns is the pool size (default 8).
	MaxConns int32
}

// Store is the Postgres driver. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	cfg  Config
	name string // user@host:port/db, for messages

	closed atomic.Bool

	mu       sync.RWMutex
	routes   map[uint64]map[uint64]struct{} // epoch → escrows known to live there
	prepared map[uint64]bool                // epochs whose partitions exist
}

var _ store.Store = (*Store)(nil)

// Open connects, applies the migrations and returns the store. An
// unreachable server is store.ErrUnavailable.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 5 * time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 3 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 8
	}
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres store: bad connection settings (DSN or PG* variables): %w", err)
	}
	pc.MaxConns = cfg.MaxConns
	pc.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	pc.ConnConfig.RuntimeParams["application_name"] = "devshard-store"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres store: %w", err)
	}
	s := &Store{
		pool:     pool,
		cfg:      cfg,
		name:     Name(pc.ConnConfig),
		routes:   map[uint64]map[uint64]struct{}{},
		prepared: map[uint64]bool{},
	}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Name renders a connection's target as user@host:port/db.
func Name(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

// Name is the database the store uses, as user@host:port/db.
func (s *Store) Name() string { return s.name }

// Pool is the store's connection pool, for tools and tests.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.pool.Close()
	}
	return nil
}

func (s *Store) op(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, store.Errorf(store.ErrClosed, "postgres store %s is closed", s.name)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	return ctx, cancel, nil
}

// Ping checks that the server answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		return s.fail(err, "ping")
	}
	return nil
}

// Reset drops the pool's connections, so that after an outage no operation
// is handed a connection to the server that went away.
func (s *Store) Reset() { s.pool.Reset() }
