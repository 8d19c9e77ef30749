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
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

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

// migrate applies the embedded migrations under goose's session advisory
// lock.
func (s *Store) migrate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		return s.fail(err, "postgres store: connect to %s", s.name)
	}
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 120))
	if err != nil {
		return err
	}
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("postgres store: load migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return s.fail(err, "postgres store: migrate %s", s.name)
	}
	return nil
}

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

// fail turns a database error into a store error: ErrUnavailable when the
// server cannot be reached, ErrEpochPruned when the epoch's partition is
// gone.
func (s *Store) fail(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	switch {
	case s.closed.Load():
		return store.Wrap(store.ErrClosed, err, "%s: the store is closed", msg)
	case Unavailable(err):
		return store.Wrap(store.ErrUnavailable, err, "%s: Postgres %s is unavailable", msg, s.name)
	case noPartition(err):
		return store.Wrap(store.ErrEpochPruned, err, "%s: the epoch's partition is gone (pruned)", msg)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// Unavailable reports whether err means the server could not be reached or
// went away, rather than refusing the statement.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // shutdown, crash, starting up
			return true
		case pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connErr) || errors.As(err, &netErr) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "closed pool")
}

// noPartition reports an insert whose epoch has no partition.
func noPartition(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23514" && strings.Contains(pgErr.Message, "no partition")
}

func notFound(escrowID uint64) error {
	return store.Errorf(store.ErrNotFound, "escrow %d has no session in this store (never created here, or its epoch was pruned)", escrowID)
}

// epochOf returns the epoch holding escrowID's session, from the cache or
// the sessions table.
func (s *Store) epochOf(ctx context.Context, escrowID uint64) (uint64, error) {
	s.mu.RLock()
	for epoch, set := range s.routes {
		if _, ok := set[escrowID]; ok {
			s.mu.RUnlock()
			return epoch, nil
		}
	}
	s.mu.RUnlock()
	var epoch int64
	err := s.pool.QueryRow(ctx, "SELECT epoch_id FROM sessions WHERE escrow_id = $1", int64(escrowID)).Scan(&epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, notFound(escrowID)
	}
	if err != nil {
		return 0, s.fail(err, "look up escrow %d", escrowID)
	}
	s.remember(uint64(epoch), escrowID)
	return uint64(epoch), nil
}

func (s *Store) remember(epoch, escrowID uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.routes[epoch]
	if set == nil {
		set = map[uint64]struct{}{}
		s.routes[epoch] = set
	}
	set[escrowID] = struct{}{}
}

// lockKey is the advisory lock serializing the layout changes of one epoch
// (partition creation, pruning) or the creation of one escrow.
const (
	lockEpoch  = "SELECT pg_advisory_xact_lock(hashtextextended('devshard/store/epoch/' || $1::bigint, 0))"
	lockEscrow = "SELECT pg_advisory_xact_lock(hashtextextended('devshard/store/escrow/' || $1::bigint, 0))"
)

// CreateSession implements store.Sessions.
func (s *Store) CreateSession(ctx context.Context, snap *sessionpb.EscrowSnapshot) error {
	if snap == nil {
		return store.Errorf(store.ErrInvalid, "create session: escrow snapshot is missing")
	}
	data, err := snap.Marshal()
	if err != nil {
		return fmt.Errorf("create session of escrow %d: marshal snapshot: %w", snap.EscrowId, err)
	}
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	id, epoch := snap.EscrowId, snap.Epoch
	if err := s.ensureEpoch(ctx, epoch); err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockEscrow, int64(id)); err != nil {
			return err
		}
		var stored int64
		var storedSnap []byte
		err := tx.QueryRow(ctx, "SELECT epoch_id, snapshot FROM sessions WHERE escrow_id = $1", int64(id)).Scan(&stored, &storedSnap)
		switch {
		case err == nil && uint64(stored) != epoch:
			return store.Errorf(store.ErrConflict, "escrow %d already has a session in epoch %d; refusing to create it again in epoch %d", id, stored, epoch)
		case err == nil && string(storedSnap) != string(data):
			return store.Errorf(store.ErrConflict, "escrow %d already has a session with a different escrow snapshot; refusing to replace it", id)
		case err == nil:
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO sessions (epoch_id, escrow_id, snapshot) VALUES ($1, $2, $3)", int64(epoch), int64(id), data)
		return err
	})
	var se *store.Error
	if errors.As(err, &se) {
		return err
	}
	if err != nil {
		return s.fail(err, "create session of escrow %d in epoch %d", id, epoch)
	}
	s.remember(epoch, id)
	return nil
}

// Session implements store.Sessions.
func (s *Store) Session(ctx context.Context, escrowID uint64) (*store.Session, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var epoch, last int64
	var snap []byte
	err = s.pool.QueryRow(ctx, `
		SELECT epoch_id, snapshot,
			(SELECT COALESCE(MAX(nonce), 0) FROM diffs d WHERE d.epoch_id = s.epoch_id AND d.escrow_id = s.escrow_id)
		FROM sessions s WHERE escrow_id = $1`, int64(escrowID)).Scan(&epoch, &snap, &last)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound(escrowID)
	}
	if err != nil {
		return nil, s.fail(err, "read session of escrow %d", escrowID)
	}
	s.remember(uint64(epoch), escrowID)
	return decodeSession(escrowID, uint64(epoch), snap, last)
}

func decodeSession(id, epoch uint64, snap []byte, last int64) (*store.Session, error) {
	var es sessionpb.EscrowSnapshot
	if err := es.Unmarshal(snap); err != nil {
		return nil, fmt.Errorf("stored escrow snapshot of escrow %d does not decode: %w", id, err)
	}
	return &store.Session{EscrowID: id, Epoch: epoch, Snapshot: &es, LastNonce: uint64(last)}, nil
}

// ListSessions implements store.Sessions.
func (s *Store) ListSessions(ctx context.Context) ([]*store.Session, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		SELECT escrow_id, epoch_id, snapshot,
			(SELECT COALESCE(MAX(nonce), 0) FROM diffs d WHERE d.epoch_id = s.epoch_id AND d.escrow_id = s.escrow_id)
		FROM sessions s ORDER BY escrow_id`)
	if err != nil {
		return nil, s.fail(err, "list sessions")
	}
	defer rows.Close()
	var out []*store.Session
	for rows.Next() {
		var id, epoch, last int64
		var snap []byte
		if err := rows.Scan(&id, &epoch, &snap, &last); err != nil {
			return nil, s.fail(err, "list sessions")
		}
		x, err := decodeSession(uint64(id), uint64(epoch), snap, last)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(err, "list sessions")
	}
	slices.SortFunc(out, func(a, b *store.Session) int { return cmp.Compare(a.EscrowID, b.EscrowID) })
	return out, nil
}

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

// PutSnapshot implements store.Snapshots.
func (s *Store) PutSnapshot(ctx context.Context, snap store.Snapshot) error {
	if snap.Nonce == 0 || len(snap.Root) != 32 || len(snap.State) == 0 {
		return store.Errorf(store.ErrInvalid, "snapshot of escrow %d at nonce %d is malformed: it needs a nonce, a 32-byte root and a state", snap.EscrowID, snap.Nonce)
	}
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, snap.EscrowID)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `
		INSERT INTO snapshots (epoch_id, escrow_id, nonce, root, state) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (epoch_id, escrow_id) DO UPDATE SET nonce = excluded.nonce, root = excluded.root, state = excluded.state
		WHERE excluded.nonce > snapshots.nonce`,
		int64(epoch), int64(snap.EscrowID), int64(snap.Nonce), snap.Root, snap.State)
	if err != nil {
		return s.fail(err, "store snapshot of escrow %d at nonce %d", snap.EscrowID, snap.Nonce)
	}
	return nil
}

// Snapshot implements store.Snapshots.
func (s *Store) Snapshot(ctx context.Context, escrowID uint64) (store.Snapshot, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer cancel()
	epoch, err := s.epochOf(ctx, escrowID)
	if err != nil {
		return store.Snapshot{}, err
	}
	snap := store.Snapshot{EscrowID: escrowID}
	var nonce int64
	err = s.pool.QueryRow(ctx, "SELECT nonce, root, state FROM snapshots WHERE epoch_id = $1 AND escrow_id = $2",
		int64(epoch), int64(escrowID)).Scan(&nonce, &snap.Root, &snap.State)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Snapshot{}, store.Errorf(store.ErrNotFound, "escrow %d has no snapshot yet", escrowID)
	}
	if err != nil {
		return store.Snapshot{}, s.fail(err, "read snapshot of escrow %d", escrowID)
	}
	snap.Nonce = uint64(nonce)
	return snap, nil
}

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

// PrepareEpoch implements store.Epochs.
func (s *Store) PrepareEpoch(ctx context.Context, epoch uint64) error {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	return s.ensureEpoch(ctx, epoch)
}

// ensureEpoch creates the epoch's partition of every partitioned table that
// lacks one. It runs under the epoch's advisory lock, so concurrent
// creators (in this process or others) serialize and the later ones find
// the work done.
func (s *Store) ensureEpoch(ctx context.Context, epoch uint64) error {
	s.mu.RLock()
	done := s.prepared[epoch]
	s.mu.RUnlock()
	if done {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockEpoch, int64(epoch)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
			return err
		}
		var pruned bool
		err := tx.QueryRow(ctx, "SELECT pruned_at IS NOT NULL FROM store_epochs WHERE epoch_id = $1", int64(epoch)).Scan(&pruned)
		switch {
		case err == nil && pruned:
			return store.Errorf(store.ErrEpochPruned, "epoch %d was pruned from this store; nothing can be stored in it any more", epoch)
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, "INSERT INTO store_epochs (epoch_id) VALUES ($1)", int64(epoch)); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		parts, err := partitions(ctx, tx)
		if err != nil {
			return err
		}
		for _, parent := range parts.parents {
			if parts.covered(parent, epoch) {
				continue
			}
			name := pgx.Identifier{fmt.Sprintf("%s_e%d", parent, epoch)}.Sanitize()
			q := fmt.Sprintf("CREATE TABLE %s PARTITION OF %s FOR VALUES FROM (%d) TO (%d)",
				name, pgx.Identifier{parent}.Sanitize(), epoch, epoch+1)
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("create partition of %s for epoch %d: %w", parent, epoch, err)
			}
		}
		return nil
	})
	var se *store.Error
	if errors.As(err, &se) {
		return err
	}
	if err != nil {
		return s.fail(err, "prepare epoch %d", epoch)
	}
	s.mu.Lock()
	s.prepared[epoch] = true
	s.mu.Unlock()
	return nil
}

// Epochs implements store.Epochs.
func (s *Store) Epochs(ctx context.Context) ([]uint64, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	rows, err := s.pool.Query(ctx, "SELECT epoch_id FROM store_epochs WHERE pruned_at IS NULL ORDER BY epoch_id")
	if err != nil {
		return nil, s.fail(err, "list epochs")
	}
	epochs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, s.fail(err, "list epochs")
	}
	out := make([]uint64, len(epochs))
	for i, e := range epochs {
		out[i] = uint64(e)
	}
	return out, nil
}

// Prune implements store.Epochs: it drops every partition, of every table
// partitioned by epoch_id, whose range lies within the epoch, and marks the
// epoch pruned, in one transaction. Partitions spanning other epochs too
// (not made by this store) are left alone.
func (s *Store) Prune(ctx context.Context, epoch uint64) error {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockEpoch, int64(epoch)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO store_epochs (epoch_id, pruned_at) VALUES ($1, now())
			ON CONFLICT (epoch_id) DO UPDATE SET pruned_at = COALESCE(store_epochs.pruned_at, now())`, int64(epoch)); err != nil {
			return err
		}
		parts, err := partitions(ctx, tx)
		if err != nil {
			return err
		}
		drop := parts.within(epoch)
		if len(drop) == 0 {
			return nil
		}
		names := make([]string, len(drop))
		for i, p := range drop {
			names[i] = pgx.Identifier{p}.Sanitize()
		}
		_, err = tx.Exec(ctx, "DROP TABLE "+strings.Join(names, ", "))
		return err
	})
	if err != nil {
		return s.fail(err, "prune epoch %d", epoch)
	}
	s.mu.Lock()
	delete(s.routes, epoch)
	delete(s.prepared, epoch)
	s.mu.Unlock()
	return nil
}

// layout is the partitioning found in the catalog.
type layout struct {
	parents []string          // tables PARTITION BY RANGE (epoch_id)
	parts   map[string][]part // parent → its partitions with a numeric range
}

type part struct {
	name     string
	from, to int64 // [from, to)
}

// partitions reads, from the catalog, every table of the current schema
// that is PARTITION BY RANGE (epoch_id), with its partitions.
func partitions(ctx context.Context, tx pgx.Tx) (*layout, error) {
	rows, err := tx.Query(ctx, `
		SELECT p.relname, c.relname, pg_get_expr(c.relpartbound, c.oid)
		FROM pg_partitioned_table pt
		JOIN pg_class p ON p.oid = pt.partrelid
		JOIN pg_namespace n ON n.oid = p.relnamespace
		JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = pt.partattrs[0]
		LEFT JOIN pg_inherits i ON i.inhparent = p.oid
		LEFT JOIN pg_class c ON c.oid = i.inhrelid
		WHERE n.nspname = current_schema()
			AND pt.partstrat = 'r' AND pt.partnatts = 1 AND a.attname = 'epoch_id'
			AND NOT p.relispartition
		ORDER BY p.relname, c.relname`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	l := &layout{parts: map[string][]part{}}
	for rows.Next() {
		var parent string
		var child, bound *string
		if err := rows.Scan(&parent, &child, &bound); err != nil {
			return nil, err
		}
		if len(l.parents) == 0 || l.parents[len(l.parents)-1] != parent {
			l.parents = append(l.parents, parent)
		}
		if child == nil || bound == nil {
			continue
		}
		if from, to, ok := parseRange(*bound); ok {
			l.parts[parent] = append(l.parts[parent], part{name: *child, from: from, to: to})
		}
	}
	return l, rows.Err()
}

var rangeBound = regexp.MustCompile(`^FOR VALUES FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)$`)

// parseRange parses a numeric range partition bound; MINVALUE, MAXVALUE and
// DEFAULT bounds are not ours and do not parse.
func parseRange(bound string) (from, to int64, ok bool) {
	m := rangeBound.FindStringSubmatch(bound)
	if m == nil {
		return 0, 0, false
	}
	from, err1 := strconv.ParseInt(m[1], 10, 64)
	to, err2 := strconv.ParseInt(m[2], 10, 64)
	return from, to, err1 == nil && err2 == nil
}

// covered reports whether parent has a partition holding epoch.
func (l *layout) covered(parent string, epoch uint64) bool {
	e := int64(epoch)
	for _, p := range l.parts[parent] {
		if p.from <= e && e < p.to {
			return true
		}
	}
	return false
}

// within lists the partitions, of every parent, whose range lies within
// epoch.
func (l *layout) within(epoch uint64) []string {
	e := int64(epoch)
	var out []string
	for _, parent := range l.parents {
		for _, p := range l.parts[parent] {
			if p.from >= e && p.to <= e+1 && p.from < p.to {
				out = append(out, p.name)
			}
		}
	}
	return out
}

// CountSessions counts the sessions of live epochs.
func (s *Store) CountSessions(ctx context.Context) (int, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM sessions").Scan(&n); err != nil {
		return 0, s.fail(err, "count sessions")
	}
	return n, nil
}

// Holding returns which of ids have a session here.
func (s *Store) Holding(ctx context.Context, ids []uint64) ([]uint64, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	keys := make([]int64, len(ids))
	for i, id := range ids {
		keys[i] = int64(id)
	}
	rows, err := s.pool.Query(ctx, "SELECT DISTINCT escrow_id FROM sessions WHERE escrow_id = ANY($1) ORDER BY 1", keys)
	if err != nil {
		return nil, s.fail(err, "look up %d escrows", len(ids))
	}
	held, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, s.fail(err, "look up %d escrows", len(ids))
	}
	out := make([]uint64, len(held))
	for i, id := range held {
		out[i] = uint64(id)
	}
	return out, nil
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
