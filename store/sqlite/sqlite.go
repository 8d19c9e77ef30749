// Package sqlite is the default store driver: a _meta.db routing index
// (escrow → epoch) and one epoch_<N>.db file per epoch, each in WAL mode.
//
// Durability: every write commits with synchronous=FULL, so it is fsynced to
// the write-ahead log before the call returns and survives power loss
// (internal/sqlitedb explains each setting). Pruning an epoch closes its pools and
// moves its files into _trash/ with a rename, which costs the same whatever
// they held; a background reclaimer then deletes them.
//
// One process owns a store directory at a time; Open takes an exclusive lock
// on it. Within the process each epoch file has a single writer connection,
// so writes to a file are serialized and never see SQLITE_BUSY, while reads
// go through a separate pool and never wait for writes.
package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/devshard/devshard/internal/sqlitedb"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

// DriverName is the database/sql driver the store runs on, chosen at build
// time in internal/sqlitedb (-tags sqlite_cgo for the cgo driver).
const DriverName = sqlitedb.DriverName

// Options tune a Store. The zero value is the production setting.
type Options struct {
	// Synchronous is SQLite's synchronous level for commits: "FULL" (the
	// default: fsync at every commit) or "NORMAL" (fsync at checkpoints only;
	// survives a process crash, not power loss).
	Synchronous string
	// Readers is the size of each epoch file's read pool (default 4).
	Readers int
	// Fallback marks the store as the hybrid driver's local fallback, which
	// may open while the Postgres marker (MarkerFile) is present.
	Fallback bool
}

// Store is the SQLite driver. It is safe for concurrent use.
type Store struct {
	dir  string
	opts Options
	lock *os.File
	meta *meta

	// layoutMu serializes changes to the layout: creating sessions, adding
	// and pruning epochs.
	layoutMu sync.Mutex

	mu     sync.RWMutex
	closed bool
	states map[uint64]string              // every known epoch's state
	epochs map[uint64]*epochDB            // open files of live epochs
	routes map[uint64]map[uint64]struct{} // live epoch → its escrows

	// The reclaimer deletes the files of pruned epochs in the background.
	reclaimKick chan struct{}
	reclaimDone chan struct{}
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store in dir. It finishes a prune
// that a crash interrupted. Unless opts.Fallback is set it refuses to open
// while the Postgres marker says Postgres holds live sessions.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	switch opts.Synchronous = strings.ToUpper(opts.Synchronous); opts.Synchronous {
	case "":
		opts.Synchronous = "FULL"
	case "FULL", "NORMAL", "EXTRA":
	default:
		return nil, fmt.Errorf("sqlite store: synchronous must be FULL or NORMAL, got %q", opts.Synchronous)
	}
	if opts.Readers <= 0 {
		opts.Readers = 4
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sqlite store: create directory: %w", err)
	}
	if !opts.Fallback {
		if err := checkMarker(dir); err != nil {
			return nil, err
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Store{
		dir:    dir,
		opts:   opts,
		lock:   lock,
		states: map[uint64]string{},
		epochs: map[uint64]*epochDB{},
		routes: map[uint64]map[uint64]struct{}{},

		reclaimKick: make(chan struct{}, 1),
		reclaimDone: make(chan struct{}),
	}
	go s.reclaimer()
	s.reclaim() // files left by a prune before a crash
	if err := s.load(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite store %s: %w", dir, err)
	}
	return s, nil
}

// reclaim wakes the reclaimer.
func (s *Store) reclaim() {
	select {
	case s.reclaimKick <- struct{}{}:
	default:
	}
}

// reclaimer deletes the trash whenever woken, until reclaimKick is closed.
// A failed deletion is retried at the next prune or Open.
func (s *Store) reclaimer() {
	defer close(s.reclaimDone)
	for range s.reclaimKick {
		emptyTrash(s.dir)
	}
}

// Reclaim deletes the files of pruned epochs now, instead of waiting for
// the background reclaimer.
func (s *Store) Reclaim() error {
	return emptyTrash(s.dir)
}

// load reads the routing index and opens the files of live epochs.
func (s *Store) load(ctx context.Context) error {
	m, err := openMeta(ctx, s.dir, s.opts)
	if err != nil {
		return err
	}
	s.meta = m
	states, err := m.epochStates(ctx)
	if err != nil {
		return fmt.Errorf("read epochs from %s: %w", metaFile, err)
	}
	for epoch, st := range states {
		s.states[epoch] = st
		switch st {
		case statePruning:
			if err := s.finishPrune(ctx, epoch); err != nil {
				return err
			}
		case stateLive:
			routes, err := m.routes(ctx, epoch)
			if err != nil {
				return fmt.Errorf("read routes of epoch %d: %w", epoch, err)
			}
			e, err := openEpoch(ctx, s.dir, epoch, s.opts)
			if err != nil {
				return err
			}
			s.epochs[epoch] = e
			s.routes[epoch] = routes
		}
	}
	return nil
}

// lockRetries and lockRetryEvery bound how long lockDir asks again for a
// lock that is held: half a second.
const (
	lockRetries    = 10
	lockRetryEvery = 50 * time.Millisecond
)

// lockDir takes an exclusive lock on the directory for this process. The
// kernel releases it when the process dies, however it dies.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "_lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("sqlite store: open lock file: %w", err)
	}
	// A lock held only by a child this process is forking (it holds a
	// copy of the lock's file until its exec closes it) goes within
	// milliseconds: a held lock is asked again for a short while before it
	// counts as another process's.
	for try := 0; ; try++ {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if try < lockRetries && errors.Is(err, syscall.EWOULDBLOCK) {
			time.Sleep(lockRetryEvery)
			continue
		}
		owner, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("sqlite store %s is in use by another process (%s): stop it first", dir, strings.TrimSpace(string(owner)))
	}
	f.Truncate(0)
	fmt.Fprintf(f, "pid %d\n", os.Getpid())
	return f, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Synchronous reads the durability level back from the store's writing
// connections (the meta file's and every open epoch's), so that a host can
// log what its commits really do rather than what was asked.
func (s *Store) Synchronous(ctx context.Context) (string, error) {
	s.mu.RLock()
	dbs := []*sql.DB{s.meta.db}
	for _, e := range s.epochs {
		dbs = append(dbs, e.w)
	}
	s.mu.RUnlock()
	names := map[int]string{0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
	level := ""
	for _, db := range dbs {
		var n int
		if err := db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&n); err != nil {
			return "", fmt.Errorf("sqlite store %s: read synchronous: %w", s.dir, err)
		}
		if level != "" && names[n] != level {
			return "", fmt.Errorf("sqlite store %s: connections disagree on synchronous: %s and %s", s.dir, level, names[n])
		}
		level = names[n]
	}
	return level, nil
}

// Close closes every file. It waits for operations in flight.
func (s *Store) Close() error {
	s.layoutMu.Lock()
	defer s.layoutMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	epochs := s.epochs
	s.epochs = map[uint64]*epochDB{}
	s.routes = map[uint64]map[uint64]struct{}{}
	s.mu.Unlock()

	var errs []error
	for _, e := range epochs {
		e.mu.Lock()
		e.closed = true
		errs = append(errs, e.close())
		e.mu.Unlock()
	}
	if s.meta != nil {
		errs = append(errs, s.meta.close())
	}
	close(s.reclaimKick)
	<-s.reclaimDone
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
}

func (s *Store) errClosed() error {
	return store.Errorf(store.ErrClosed, "sqlite store %s is closed", s.dir)
}

func notFound(escrowID uint64) error {
	return store.Errorf(store.ErrNotFound, "escrow %d has no session in this store (never created here, or its epoch was pruned)", escrowID)
}

// lookup returns the file holding escrowID's session.
func (s *Store) lookup(escrowID uint64) (*epochDB, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, s.errClosed()
	}
	for epoch, set := range s.routes {
		if _, ok := set[escrowID]; ok {
			return s.epochs[epoch], nil
		}
	}
	return nil, notFound(escrowID)
}

// acquire returns the file holding escrowID's session, held for one
// operation: release it with e.mu.RUnlock.
func (s *Store) acquire(escrowID uint64) (*epochDB, error) {
	e, err := s.lookup(escrowID)
	if err != nil {
		return nil, err
	}
	if !e.acquire() {
		return nil, notFound(escrowID)
	}
	return e, nil
}

// CreateSession implements store.Sessions.
func (s *Store) CreateSession(ctx context.Context, snap *sessionpb.EscrowSnapshot) error {
	if snap == nil {
		return store.Errorf(store.ErrInvalid, "create session: escrow snapshot is missing")
	}
	data, err := snap.Marshal()
	if err != nil {
		return fmt.Errorf("create session of escrow %d: marshal snapshot: %w", snap.EscrowId, err)
	}
	s.layoutMu.Lock()
	defer s.layoutMu.Unlock()

	id, epoch := snap.EscrowId, snap.Epoch
	if e, err := s.lookup(id); err == nil {
		return s.sameSession(ctx, e, id, epoch, data)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	e, err := s.ensureEpoch(ctx, epoch)
	if err != nil {
		return err
	}
	if !e.acquire() {
		return store.Errorf(store.ErrEpochPruned, "escrow %d cannot be created: epoch %d is being pruned", id, epoch)
	}
	err = e.putSession(ctx, id, data)
	e.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("create session of escrow %d in %s: %w", id, e.path, err)
	}
	// The route is the commit point: until it is written the session row
	// is invisible, and a retry overwrites it.
	if err := s.meta.addRoute(ctx, epoch, id); err != nil {
		return fmt.Errorf("create session of escrow %d: route it in %s: %w", id, metaFile, err)
	}
	s.mu.Lock()
	s.routes[epoch][id] = struct{}{}
	s.mu.Unlock()
	return nil
}

// sameSession checks a repeated CreateSession against the stored session.
func (s *Store) sameSession(ctx context.Context, e *epochDB, id, epoch uint64, data []byte) error {
	if e.epoch != epoch {
		return store.Errorf(store.ErrConflict, "escrow %d already has a session in epoch %d; refusing to create it again in epoch %d", id, e.epoch, epoch)
	}
	if !e.acquire() {
		return notFound(id)
	}
	defer e.mu.RUnlock()
	stored, err := e.snapshotBytes(ctx, id)
	if err != nil {
		return err
	}
	if string(stored) != string(data) {
		return store.Errorf(store.ErrConflict, "escrow %d already has a session with a different escrow snapshot; refusing to replace it", id)
	}
	return nil
}

// ensureEpoch returns the open file of epoch, creating it. layoutMu must be
// held.
func (s *Store) ensureEpoch(ctx context.Context, epoch uint64) (*epochDB, error) {
	s.mu.RLock()
	closed, st, e := s.closed, s.states[epoch], s.epochs[epoch]
	s.mu.RUnlock()
	switch {
	case closed:
		return nil, s.errClosed()
	case st == statePruning || st == statePruned:
		return nil, store.Errorf(store.ErrEpochPruned, "epoch %d was pruned from this store; nothing can be stored in it any more", epoch)
	case e != nil:
		return e, nil
	}
	if err := s.meta.addEpoch(ctx, epoch); err != nil {
		return nil, fmt.Errorf("add epoch %d to %s: %w", epoch, metaFile, err)
	}
	e, err := openEpoch(ctx, s.dir, epoch, s.opts)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.states[epoch] = stateLive
	s.epochs[epoch] = e
	s.routes[epoch] = map[uint64]struct{}{}
	s.mu.Unlock()
	return e, nil
}

// Session implements store.Sessions.
func (s *Store) Session(ctx context.Context, escrowID uint64) (*store.Session, error) {
	e, err := s.acquire(escrowID)
	if err != nil {
		return nil, err
	}
	defer e.mu.RUnlock()
	return e.session(ctx, escrowID)
}

// ListSessions implements store.Sessions.
func (s *Store) ListSessions(ctx context.Context) ([]*store.Session, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, s.errClosed()
	}
	type part struct {
		e      *epochDB
		routes map[uint64]struct{}
	}
	var parts []part
	for epoch, e := range s.epochs {
		parts = append(parts, part{e, maps.Clone(s.routes[epoch])})
	}
	s.mu.RUnlock()

	var out []*store.Session
	for _, p := range parts {
		if !p.e.acquire() {
			continue // pruned meanwhile
		}
		ss, err := p.e.sessions(ctx)
		p.e.mu.RUnlock()
		if err != nil {
			return nil, err
		}
		for _, x := range ss {
			if _, routed := p.routes[x.EscrowID]; routed {
				out = append(out, x)
			}
		}
	}
	slices.SortFunc(out, func(a, b *store.Session) int { return cmp.Compare(a.EscrowID, b.EscrowID) })
	return out, nil
}

// AppendDiff implements store.Diffs.
func (s *Store) AppendDiff(ctx context.Context, d store.Diff) error {
	return store.DiffErrors(s.AppendDiffs(ctx, []store.Diff{d}), 1)[0]
}

// AppendDiffs implements store.Diffs: one transaction, so one fsync, per
// epoch file the batch touches.
func (s *Store) AppendDiffs(ctx context.Context, ds []store.Diff) error {
	errs := make([]error, len(ds))
	var order []*epochDB
	groups := map[*epochDB][]int{}
	for i := range ds {
		if err := store.CheckDiff(&ds[i]); err != nil {
			errs[i] = err
			continue
		}
		e, err := s.lookup(ds[i].EscrowID)
		if err != nil {
			errs[i] = err
			continue
		}
		if _, seen := groups[e]; !seen {
			order = append(order, e)
		}
		groups[e] = append(groups[e], i)
	}
	for _, e := range order {
		idx := groups[e]
		if !e.acquire() {
			for _, i := range idx {
				errs[i] = notFound(ds[i].EscrowID)
			}
			continue
		}
		err := e.appendDiffs(ctx, ds, idx, errs)
		e.mu.RUnlock()
		if err != nil {
			err = fmt.Errorf("append diffs to %s: %w", e.path, err)
			for _, i := range idx {
				errs[i] = err
			}
		}
	}
	return store.BatchResult(errs)
}

// Diffs implements store.Diffs.
func (s *Store) Diffs(ctx context.Context, escrowID, from uint64, limit int) ([]store.Diff, error) {
	e, err := s.acquire(escrowID)
	if err != nil {
		return nil, err
	}
	defer e.mu.RUnlock()
	return e.diffs(ctx, escrowID, from, limit)
}

// LastNonce implements store.Diffs.
func (s *Store) LastNonce(ctx context.Context, escrowID uint64) (uint64, error) {
	e, err := s.acquire(escrowID)
	if err != nil {
		return 0, err
	}
	defer e.mu.RUnlock()
	return e.lastNonce(ctx, escrowID)
}

// PutSignature implements store.Signatures.
func (s *Store) PutSignature(ctx context.Context, sig store.Signature) error {
	e, err := s.acquire(sig.EscrowID)
	if err != nil {
		return err
	}
	defer e.mu.RUnlock()
	return e.putSignature(ctx, sig)
}

// Signatures implements store.Signatures.
func (s *Store) Signatures(ctx context.Context, escrowID, nonce uint64) ([]store.Signature, error) {
	e, err := s.acquire(escrowID)
	if err != nil {
		return nil, err
	}
	defer e.mu.RUnlock()
	return e.signatures(ctx, escrowID, nonce)
}

// PutSnapshot implements store.Snapshots.
func (s *Store) PutSnapshot(ctx context.Context, snap store.Snapshot) error {
	if snap.Nonce == 0 || len(snap.Root) != 32 || len(snap.State) == 0 {
		return store.Errorf(store.ErrInvalid, "snapshot of escrow %d at nonce %d is malformed: it needs a nonce, a 32-byte root and a state", snap.EscrowID, snap.Nonce)
	}
	e, err := s.acquire(snap.EscrowID)
	if err != nil {
		return err
	}
	defer e.mu.RUnlock()
	return e.putSnapshot(ctx, snap)
}

// Snapshot implements store.Snapshots.
func (s *Store) Snapshot(ctx context.Context, escrowID uint64) (store.Snapshot, error) {
	e, err := s.acquire(escrowID)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer e.mu.RUnlock()
	return e.snapshot(ctx, escrowID)
}

// IndexSealed implements store.Index.
func (s *Store) IndexSealed(ctx context.Context, rows []store.Sealed) error {
	var order []*epochDB
	groups := map[*epochDB][]store.Sealed{}
	for _, r := range rows {
		e, err := s.lookup(r.EscrowID)
		if err != nil {
			return err
		}
		if _, seen := groups[e]; !seen {
			order = append(order, e)
		}
		groups[e] = append(groups[e], r)
	}
	for _, e := range order {
		if !e.acquire() {
			return notFound(groups[e][0].EscrowID)
		}
		err := e.indexSealed(ctx, groups[e])
		e.mu.RUnlock()
		if err != nil {
			return fmt.Errorf("write sealed index rows to %s: %w", e.path, err)
		}
	}
	return nil
}

// Sealed implements store.Index.
func (s *Store) Sealed(ctx context.Context, escrowID uint64) ([]store.Sealed, error) {
	e, err := s.acquire(escrowID)
	if err != nil {
		return nil, err
	}
	defer e.mu.RUnlock()
	return e.sealed(ctx, escrowID)
}

// SealedCount implements store.Index.
func (s *Store) SealedCount(ctx context.Context, escrowID uint64) (uint64, error) {
	e, err := s.acquire(escrowID)
	if err != nil {
		return 0, err
	}
	defer e.mu.RUnlock()
	var n int64
	if err := e.r.QueryRowContext(ctx, "SELECT COUNT(*) FROM sealed WHERE escrow_id = ?", int64(escrowID)).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the sealed index of escrow %d in %s: %w", escrowID, e.path, err)
	}
	return uint64(n), nil
}

// ClearIndex implements store.Index.
func (s *Store) ClearIndex(ctx context.Context, escrowID uint64) error {
	e, err := s.acquire(escrowID)
	if err != nil {
		return err
	}
	defer e.mu.RUnlock()
	if _, err := e.w.ExecContext(ctx, "DELETE FROM sealed WHERE escrow_id = ?", int64(escrowID)); err != nil {
		return fmt.Errorf("clear the sealed index of escrow %d in %s: %w", escrowID, e.path, err)
	}
	return nil
}

// PrepareEpoch implements store.Epochs.
func (s *Store) PrepareEpoch(ctx context.Context, epoch uint64) error {
	s.layoutMu.Lock()
	defer s.layoutMu.Unlock()
	_, err := s.ensureEpoch(ctx, epoch)
	return err
}

// Epochs implements store.Epochs.
func (s *Store) Epochs(ctx context.Context) ([]uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, s.errClosed()
	}
	var out []uint64
	for epoch, st := range s.states {
		if st == stateLive {
			out = append(out, epoch)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Prune implements store.Epochs: it marks the epoch, closes its file,
// moves it to the trash, drops its route table and marks the epoch pruned.
// The reclaimer then deletes the file in the background. A crash midway is
// finished by the next Open or Prune.
func (s *Store) Prune(ctx context.Context, epoch uint64) error {
	s.layoutMu.Lock()
	defer s.layoutMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.errClosed()
	}
	if s.states[epoch] == statePruned {
		s.mu.Unlock()
		return nil
	}
	e := s.epochs[epoch]
	s.mu.Unlock()

	if err := s.meta.setState(ctx, epoch, statePruning); err != nil {
		return fmt.Errorf("prune epoch %d: mark it in %s: %w", epoch, metaFile, err)
	}
	s.mu.Lock()
	s.states[epoch] = statePruning
	delete(s.epochs, epoch)
	delete(s.routes, epoch)
	s.mu.Unlock()

	var closeErr error
	if e != nil {
		e.mu.Lock()
		e.closed = true
		closeErr = e.closeForDelete(ctx)
		e.mu.Unlock()
	}
	if err := s.finishPrune(ctx, epoch); err != nil {
		return errors.Join(err, closeErr)
	}
	return nil
}

// finishPrune retires the files of an epoch marked pruning, marks it
// pruned and wakes the reclaimer to delete the files.
func (s *Store) finishPrune(ctx context.Context, epoch uint64) error {
	if err := retireEpochFiles(s.dir, epoch); err != nil {
		return fmt.Errorf("prune epoch %d: move its files to %s: %w", epoch, trashDir, err)
	}
	defer s.reclaim()
	if err := s.meta.finishPrune(ctx, epoch); err != nil {
		return fmt.Errorf("prune epoch %d: record it in %s: %w", epoch, metaFile, err)
	}
	s.mu.Lock()
	s.states[epoch] = statePruned
	s.mu.Unlock()
	return nil
}
