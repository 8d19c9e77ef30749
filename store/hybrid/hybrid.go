// Package hybrid is the store driver that keeps Postgres primary and a
// local SQLite store as fallback.
//
//   - Each escrow sticks to the backend it was created on.
//   - While Postgres is down (the first failure marks it down for every
//     caller; only the reconnect loop probes it), new escrows are created
//     in local SQLite, and escrows that live in Postgres keep taking diffs:
//     they go to the escrow's tail in a local file (outage.go). The tail is
//     sticky until the loop, Postgres back, has copied it into Postgres in
//     nonce order; a diff that conflicts with Postgres's copy quarantines
//     the escrow.
//   - A high-water mark, kept in the tail file, records the highest escrow
//     id Postgres may hold: it is raised before each escrow is created
//     there, and to Postgres's own highest id at each connect. Escrow ids
//     only grow on chain, so during an outage an escrow above the mark that
//     SQLite does not hold is new (not found), and is created locally at
//     once, instead of waiting for Postgres to say it is not there.
//   - An escrow that both backends hold (created locally during an outage
//     although Postgres had it) is quarantined: every operation on it fails
//     with store.ErrQuarantined until an operator deletes one copy.
//   - While Postgres holds live sessions, a marker in the local directory
//     (sqlite.MarkerFile) makes a later SQLite-only start refuse to run.
package hybrid

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/sqlite"
)

// Config configures a hybrid store.
type Config struct {
	// Dir is the local SQLite store's directory.
	Dir    string
	SQLite sqlite.Options
	// Postgres configures the primary. Its timeouts default shorter than the
	// postgres driver's own (2s per operation, 1s to connect), so that an
	// outage turns into ErrUnavailable quickly.
	Postgres postgres.Config
	// Reconnect is how often the loop checks Postgres (default 1s).
	Reconnect time.Duration
}

// Backend names where an escrow lives.
type Backend string

// Backends.
const (
	Postgres Backend = "postgres"
	SQLite   Backend = "sqlite"
)

// Store is the hybrid driver. It is safe for concurrent use.
type Store struct {
	cfg    Config
	local  *sqlite.Store
	pgName string

	pgMu sync.RWMutex
	pg   *postgres.Store // nil until Postgres was first reached
	up   atomic.Bool

	tails *tails
	// tailMu serializes writes to the tails, and a tail's last copy into
	// Postgres with them, so a tail cannot grow while it is dropped.
	tailMu sync.Mutex

	mu          sync.RWMutex
	where       map[uint64]route    // escrow → where it lives
	tailed      map[uint64]tailInfo // Postgres escrows whose latest diffs are in the tail file
	quarantined map[uint64]error
	marked      bool // the marker is known to be written

	// high is the highest escrow id Postgres may hold, once highKnown
	// (see the package comment); highMu serializes raising it.
	highMu    sync.Mutex
	high      atomic.Uint64
	highKnown atomic.Bool

	// createMu serializes creation, so two creators cannot route one new
	// escrow to different backends.
	createMu sync.Mutex

	closed atomic.Bool
	kick   chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

type route struct {
	b     Backend
	epoch uint64
	// For a Postgres escrow: the last nonce Postgres is known to hold, and
	// the marshalled escrow snapshot, so that a tail can begin while
	// Postgres is down.
	last uint64
	snap []byte
}

var _ store.Store = (*Store)(nil)

// Open opens the local store and connects to Postgres. If Postgres cannot
// be reached, Open still succeeds: new escrows go to SQLite until the
// reconnect loop reaches Postgres. Other Postgres errors (bad settings, a
// failed migration) fail Open.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Reconnect <= 0 {
		cfg.Reconnect = time.Second
	}
	if cfg.Postgres.OpTimeout <= 0 {
		cfg.Postgres.OpTimeout = 2 * time.Second
	}
	if cfg.Postgres.ConnectTimeout <= 0 {
		cfg.Postgres.ConnectTimeout = time.Second
	}
	pc, err := pgxpool.ParseConfig(cfg.Postgres.DSN)
	if err != nil {
		return nil, fmt.Errorf("hybrid store: bad Postgres settings (DSN or PG* variables): %w", err)
	}
	cfg.SQLite.Fallback = true
	local, err := sqlite.Open(ctx, cfg.Dir, cfg.SQLite)
	if err != nil {
		return nil, err
	}
	tl, err := openTails(ctx, cfg.Dir, cfg.SQLite.Synchronous)
	if err != nil {
		local.Close()
		return nil, err
	}
	tailed, err := tl.all(ctx)
	if err != nil {
		local.Close()
		tl.close()
		return nil, err
	}
	h := &Store{
		cfg:         cfg,
		local:       local,
		tails:       tl,
		tailed:      tailed,
		pgName:      postgres.Name(pc.ConnConfig),
		where:       map[uint64]route{},
		quarantined: map[uint64]error{},
		kick:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	for id, ti := range tailed {
		h.where[id] = route{b: Postgres, epoch: ti.epoch, last: ti.base, snap: ti.snap}
	}
	high, known, err := tl.high(ctx)
	if err != nil {
		local.Close()
		tl.close()
		return nil, err
	}
	h.high.Store(high)
	h.highKnown.Store(known)
	if err := h.connect(ctx); err != nil && !errors.Is(err, store.ErrUnavailable) {
		local.Close()
		tl.close()
		return nil, err
	}
	go h.loop()
	return h, nil
}

// connect reaches Postgres (opening the driver on first success),
// reconciles the backends and marks Postgres up.
func (h *Store) connect(ctx context.Context) error {
	h.pgMu.Lock()
	pg := h.pg
	h.pgMu.Unlock()
	if pg == nil {
		var err error
		if pg, err = postgres.Open(ctx, h.cfg.Postgres); err != nil {
			return err
		}
		h.pgMu.Lock()
		h.pg = pg
		h.pgMu.Unlock()
	} else if err := pg.Ping(ctx); err != nil {
		return err
	}
	if err := h.reconcile(ctx, pg); err != nil {
		return err
	}
	high, err := pg.HighestEscrow(ctx)
	if err != nil {
		return err
	}
	if err := h.raiseHigh(ctx, high); err != nil {
		return err
	}
	if err := h.syncMarker(ctx, pg); err != nil {
		return err
	}
	h.up.Store(true)
	return nil
}

// reconcile quarantines every escrow that both backends hold. Only local
// escrows can be doubled, and there are few: those created during outages.
func (h *Store) reconcile(ctx context.Context, pg *postgres.Store) error {
	locals, err := h.local.ListSessions(ctx)
	if err != nil {
		return err
	}
	if len(locals) == 0 {
		return nil
	}
	ids := make([]uint64, len(locals))
	for i, s := range locals {
		ids[i] = s.EscrowID
	}
	both, err := pg.Holding(ctx, ids)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range both {
		h.quarantine(id)
	}
	return nil
}

// raiseHigh raises the high-water mark to id, durably, before the caller
// lets Postgres hold escrow id.
func (h *Store) raiseHigh(ctx context.Context, id uint64) error {
	h.highMu.Lock()
	defer h.highMu.Unlock()
	if h.highKnown.Load() && id <= h.high.Load() {
		return nil
	}
	if err := h.tails.raiseHigh(ctx, id); err != nil {
		return err
	}
	h.high.Store(max(id, h.high.Load()))
	h.highKnown.Store(true)
	return nil
}

// newerThanPostgres reports whether escrow id is above every escrow
// Postgres may hold: then, not in SQLite, it is held nowhere.
func (h *Store) newerThanPostgres(id uint64) bool {
	return h.highKnown.Load() && id > h.high.Load()
}

// notHeld is the not-found answer for an escrow newer than Postgres's.
func (h *Store) notHeld(id uint64) error {
	return store.Errorf(store.ErrNotFound, "escrow %d has no session: it is not in the local SQLite store, and is newer than any escrow Postgres %s holds", id, h.pgName)
}

// quarantine records escrow id as held by both backends. h.mu must be held.
func (h *Store) quarantine(id uint64) {
	h.quarantineFor(id, store.Errorf(store.ErrQuarantined,
		"escrow %d is quarantined: both Postgres %s and the local SQLite store in %s hold a session for it "+
			"(the local one was created while Postgres was unavailable); neither is used until an operator deletes one of them",
		id, h.pgName, h.cfg.Dir))
}

// quarantineFor quarantines escrow id for the reason err. h.mu must be
// held.
func (h *Store) quarantineFor(id uint64, err error) {
	if _, done := h.quarantined[id]; done {
		return
	}
	delete(h.where, id)
	h.quarantined[id] = err
}

// syncMarker writes the marker while Postgres holds sessions and removes it
// once it holds none.
func (h *Store) syncMarker(ctx context.Context, pg *postgres.Store) error {
	n, err := pg.CountSessions(ctx)
	if err != nil {
		return err
	}
	if n == 0 {
		h.mu.Lock()
		h.marked = false
		h.mu.Unlock()
		return sqlite.RemoveMarker(h.cfg.Dir)
	}
	return h.writeMarker(n)
}

func (h *Store) writeMarker(sessions int) error {
	if err := sqlite.WriteMarker(h.cfg.Dir, sqlite.Marker{Postgres: h.pgName, Sessions: sessions, Written: time.Now().UTC()}); err != nil {
		return err
	}
	h.mu.Lock()
	h.marked = true
	h.mu.Unlock()
	return nil
}

// loop checks Postgres every Reconnect interval: it reconnects while
// Postgres is down and pings it while up, so an outage is noticed even
// without traffic.
func (h *Store) loop() {
	defer close(h.done)
	t := time.NewTicker(h.cfg.Reconnect)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		case <-h.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*h.cfg.Postgres.OpTimeout)
		if h.up.Load() {
			if pg := h.remote(); pg != nil {
				if err := pg.Ping(ctx); err != nil {
					h.observe(err)
				}
			}
		} else {
			h.connect(ctx) // on failure, try again next tick
		}
		cancel()
		if h.up.Load() {
			h.drainTails()
		}
	}
}

// observe marks Postgres down if err says it is unreachable.
func (h *Store) observe(err error) {
	if !errors.Is(err, store.ErrUnavailable) || h.closed.Load() {
		return
	}
	if h.up.CompareAndSwap(true, false) {
		if pg := h.remote(); pg != nil {
			pg.Reset()
		}
		select {
		case h.kick <- struct{}{}:
		default:
		}
	}
}

func (h *Store) remote() *postgres.Store {
	h.pgMu.RLock()
	defer h.pgMu.RUnlock()
	return h.pg
}

// Up reports whether Postgres is reachable, as last observed.
func (h *Store) Up() bool { return h.up.Load() }

// Local is the local SQLite store.
func (h *Store) Local() *sqlite.Store { return h.local }

// Quarantined lists the quarantined escrows with the reason for each.
func (h *Store) Quarantined() map[uint64]error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make(map[uint64]error, len(h.quarantined))
	for id, err := range h.quarantined {
		out[id] = err
	}
	return out
}

// Close stops the reconnect loop and closes both backends.
func (h *Store) Close() error {
	if !h.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(h.stop)
	<-h.done
	errs := []error{h.local.Close(), h.tails.close()}
	if pg := h.remote(); pg != nil {
		errs = append(errs, pg.Close())
	}
	return errors.Join(errs...)
}

func (h *Store) errClosed() error {
	return store.Errorf(store.ErrClosed, "hybrid store %s is closed", h.cfg.Dir)
}

func (h *Store) pgDown(id uint64) error {
	return store.Errorf(store.ErrUnavailable, "escrow %d is stored in Postgres %s, which is unavailable; retry once it is back", id, h.pgName)
}

// Backend reports where escrow id lives.
func (h *Store) Backend(ctx context.Context, id uint64) (Backend, error) {
	r, err := h.route(ctx, id)
	return r.b, err
}

// route finds where escrow id lives: the cache, else local SQLite, else
// Postgres. It fails with ErrUnavailable when only Postgres could answer
// and it is down.
func (h *Store) route(ctx context.Context, id uint64) (route, error) {
	if h.closed.Load() {
		return route{}, h.errClosed()
	}
	h.mu.RLock()
	qerr, quarantined := h.quarantined[id]
	r, known := h.where[id]
	h.mu.RUnlock()
	switch {
	case quarantined:
		return route{}, qerr
	case known:
		return r, nil
	}
	ls, err := h.local.Session(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return route{}, err
	}
	inLocal := err == nil
	pg := h.remote()
	if pg == nil || !h.up.Load() {
		if inLocal {
			// Reconciliation checks it against Postgres once it is back.
			return h.remember(id, route{b: SQLite, epoch: ls.Epoch}), nil
		}
		if h.newerThanPostgres(id) {
			return route{}, h.notHeld(id)
		}
		return route{}, store.Errorf(store.ErrUnavailable,
			"escrow %d is not in the local SQLite store, and Postgres %s, which may hold it, is unavailable; retry once it is back", id, h.pgName)
	}
	rs, err := pg.Session(ctx, id)
	switch {
	case err == nil && inLocal:
		h.mu.Lock()
		h.quarantine(id)
		qerr := h.quarantined[id]
		h.mu.Unlock()
		return route{}, qerr
	case err == nil:
		snap, merr := rs.Snapshot.Marshal()
		if merr != nil {
			return route{}, merr
		}
		return h.remember(id, route{b: Postgres, epoch: rs.Epoch, last: rs.LastNonce, snap: snap}), nil
	case inLocal && errors.Is(err, store.ErrNotFound):
		return h.remember(id, route{b: SQLite, epoch: ls.Epoch}), nil
	case errors.Is(err, store.ErrUnavailable):
		h.observe(err)
		if inLocal {
			return h.remember(id, route{b: SQLite, epoch: ls.Epoch}), nil
		}
		if h.newerThanPostgres(id) {
			return route{}, h.notHeld(id)
		}
		return route{}, store.Wrap(store.ErrUnavailable, err, "escrow %d is not in the local SQLite store, and Postgres may hold it", id)
	}
	return route{}, err
}

func (h *Store) remember(id uint64, r route) route {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, q := h.quarantined[id]; !q {
		h.where[id] = r
	}
	return r
}

// backend returns the store holding escrow id, failing fast if that is
// Postgres and it is down.
func (h *Store) backend(ctx context.Context, id uint64) (store.Store, error) {
	r, err := h.route(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.b == SQLite {
		return h.local, nil
	}
	pg := h.remote()
	if pg == nil || !h.up.Load() {
		return nil, h.pgDown(id)
	}
	return pg, nil
}

// check notes an outage behind err and passes err on.
func (h *Store) check(err error) error {
	h.observe(err)
	return err
}

// CreateSession implements store.Sessions. A new escrow goes to Postgres,
// or to local SQLite while Postgres is down.
func (h *Store) CreateSession(ctx context.Context, snap *sessionpb.EscrowSnapshot) error {
	if snap == nil {
		return store.Errorf(store.ErrInvalid, "create session: escrow snapshot is missing")
	}
	h.createMu.Lock()
	defer h.createMu.Unlock()
	id := snap.EscrowId
	r, err := h.route(ctx, id)
	switch {
	case err == nil && r.b == SQLite:
		return h.local.CreateSession(ctx, snap)
	case err == nil:
		pg := h.remote()
		if pg == nil || !h.up.Load() {
			return h.pgDown(id)
		}
		return h.check(pg.CreateSession(ctx, snap))
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrUnavailable):
		// A new escrow.
	default:
		return err
	}
	if pg := h.remote(); pg != nil && h.up.Load() {
		err := h.createRemote(ctx, pg, snap)
		if !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		h.observe(err)
	}
	if err := h.local.CreateSession(ctx, snap); err != nil {
		return err
	}
	h.remember(id, route{b: SQLite, epoch: snap.Epoch})
	return nil
}

func (h *Store) createRemote(ctx context.Context, pg *postgres.Store, snap *sessionpb.EscrowSnapshot) error {
	h.mu.RLock()
	marked := h.marked
	h.mu.RUnlock()
	if !marked {
		// The marker goes first: Postgres must never hold a session that a
		// SQLite-only restart would not know to look for.
		n, err := pg.CountSessions(ctx)
		if err != nil {
			return err
		}
		if err := h.writeMarker(n + 1); err != nil {
			return err
		}
	}
	if err := h.raiseHigh(ctx, snap.EscrowId); err != nil {
		return err
	}
	if err := pg.CreateSession(ctx, snap); err != nil {
		return err
	}
	data, err := snap.Marshal()
	if err != nil {
		return err
	}
	h.remember(snap.EscrowId, route{b: Postgres, epoch: snap.Epoch, snap: data})
	return nil
}

// Session implements store.Sessions.
func (h *Store) Session(ctx context.Context, id uint64) (*store.Session, error) {
	if ti, ok := h.tailOf(id); ok && h.quarantineErr(id) == nil {
		return h.tailSession(ctx, id, ti)
	}
	s, err := h.backend(ctx, id)
	if err != nil {
		return nil, err
	}
	out, err := s.Session(ctx, id)
	return out, h.check(err)
}

// ListSessions implements store.Sessions. It needs both backends; while
// Postgres is down it is ErrUnavailable. Quarantined escrows are left out.
func (h *Store) ListSessions(ctx context.Context) ([]*store.Session, error) {
	if h.closed.Load() {
		return nil, h.errClosed()
	}
	local, err := h.local.ListSessions(ctx)
	if err != nil {
		return nil, err
	}
	pg := h.remote()
	if pg == nil || !h.up.Load() {
		return nil, store.Errorf(store.ErrUnavailable, "listing sessions needs Postgres %s, which is unavailable", h.pgName)
	}
	remote, err := pg.ListSessions(ctx)
	if err != nil {
		return nil, h.check(err)
	}
	h.mu.Lock()
	seen := make(map[uint64]bool, len(remote))
	for _, s := range remote {
		seen[s.EscrowID] = true
	}
	for _, s := range local {
		if seen[s.EscrowID] {
			h.quarantine(s.EscrowID)
		}
	}
	out := make([]*store.Session, 0, len(local)+len(remote))
	for _, s := range slices.Concat(local, remote) {
		if _, q := h.quarantined[s.EscrowID]; q {
			continue
		}
		if ti, ok := h.tailed[s.EscrowID]; ok {
			s.LastNonce = max(s.LastNonce, ti.last)
		}
		out = append(out, s)
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b *store.Session) int { return cmp.Compare(a.EscrowID, b.EscrowID) })
	return out, nil
}

// AppendDiff implements store.Diffs.
func (h *Store) AppendDiff(ctx context.Context, d store.Diff) error {
	return store.DiffErrors(h.AppendDiffs(ctx, []store.Diff{d}), 1)[0]
}

// AppendDiffs implements store.Diffs: one batch per backend. The diffs of
// a Postgres escrow go to its tail while Postgres is down or while the
// escrow has a tail (tail.go); a batch that fails because Postgres went
// down is written to the tails at once.
func (h *Store) AppendDiffs(ctx context.Context, ds []store.Diff) error {
	errs := make([]error, len(ds))
	var local, remote, tail []int
	for i := range ds {
		r, err := h.route(ctx, ds[i].EscrowID)
		switch {
		case err != nil:
			errs[i] = err
		case r.b == SQLite:
			local = append(local, i)
		case h.isTailed(ds[i].EscrowID) || !h.up.Load() || h.remote() == nil:
			tail = append(tail, i)
		default:
			remote = append(remote, i)
		}
	}
	if len(local) > 0 {
		h.appendTo(ctx, h.local, ds, local, errs)
	}
	// Twice at most: a tail copied into Postgres meanwhile sends its
	// escrow's diffs back to Postgres, and Postgres failing sends them to a
	// tail.
	for round := 0; round < 2 && len(remote)+len(tail) > 0; round++ {
		if len(remote) > 0 {
			h.appendTo(ctx, h.remote(), ds, remote, errs)
			for _, i := range remote {
				switch {
				case errs[i] == nil:
					h.stored(ds[i].EscrowID, ds[i].Nonce)
				case errors.Is(errs[i], store.ErrUnavailable):
					// The outcome is unknown; the tail holds the diff
					// either way, and reconciling finds a committed copy
					// identical.
					tail = append(tail, i)
				}
			}
			remote = nil
		}
		if len(tail) > 0 {
			slices.Sort(tail)
			remote = h.appendTail(ctx, ds, tail, errs)
			tail = nil
		}
	}
	return store.BatchResult(errs)
}

// appendTo appends ds[i] for i in idx to s, as one batch, and sets errs[i].
func (h *Store) appendTo(ctx context.Context, s store.Store, ds []store.Diff, idx []int, errs []error) {
	batch := make([]store.Diff, len(idx))
	for k, i := range idx {
		batch[k] = ds[i]
	}
	err := h.check(s.AppendDiffs(ctx, batch))
	for k, e := range store.DiffErrors(err, len(idx)) {
		errs[idx[k]] = e
	}
}

// Diffs implements store.Diffs.
func (h *Store) Diffs(ctx context.Context, id, from uint64, limit int) ([]store.Diff, error) {
	if ti, ok := h.tailOf(id); ok && h.quarantineErr(id) == nil {
		return h.tailDiffs(ctx, id, from, limit, ti)
	}
	s, err := h.backend(ctx, id)
	if err != nil {
		return nil, err
	}
	out, err := s.Diffs(ctx, id, from, limit)
	return out, h.check(err)
}

// LastNonce implements store.Diffs.
func (h *Store) LastNonce(ctx context.Context, id uint64) (uint64, error) {
	if ti, ok := h.tailOf(id); ok && h.quarantineErr(id) == nil {
		return ti.last, nil
	}
	s, err := h.backend(ctx, id)
	if err != nil {
		return 0, err
	}
	n, err := s.LastNonce(ctx, id)
	return n, h.check(err)
}

// PutSignature implements store.Signatures.
func (h *Store) PutSignature(ctx context.Context, sig store.Signature) error {
	if ti, ok := h.tailOf(sig.EscrowID); ok && sig.Nonce > ti.base && h.quarantineErr(sig.EscrowID) == nil {
		h.tailMu.Lock()
		defer h.tailMu.Unlock()
		return h.tails.putSignature(ctx, sig)
	}
	s, err := h.backend(ctx, sig.EscrowID)
	if err != nil {
		return err
	}
	return h.check(s.PutSignature(ctx, sig))
}

// Signatures implements store.Signatures.
func (h *Store) Signatures(ctx context.Context, id, nonce uint64) ([]store.Signature, error) {
	if ti, ok := h.tailOf(id); ok && nonce > ti.base && h.quarantineErr(id) == nil {
		return h.tails.signatures(ctx, id, nonce)
	}
	s, err := h.backend(ctx, id)
	if err != nil {
		return nil, err
	}
	out, err := s.Signatures(ctx, id, nonce)
	return out, h.check(err)
}

// PutSnapshot implements store.Snapshots.
func (h *Store) PutSnapshot(ctx context.Context, snap store.Snapshot) error {
	s, err := h.backend(ctx, snap.EscrowID)
	if err != nil {
		return err
	}
	return h.check(s.PutSnapshot(ctx, snap))
}

// Snapshot implements store.Snapshots.
func (h *Store) Snapshot(ctx context.Context, id uint64) (store.Snapshot, error) {
	s, err := h.backend(ctx, id)
	if err != nil {
		return store.Snapshot{}, err
	}
	out, err := s.Snapshot(ctx, id)
	return out, h.check(err)
}

// IndexSealed implements store.Index.
func (h *Store) IndexSealed(ctx context.Context, rows []store.Sealed) error {
	groups := map[store.Store][]store.Sealed{}
	var order []store.Store
	for _, r := range rows {
		s, err := h.backend(ctx, r.EscrowID)
		if err != nil {
			return err
		}
		if _, seen := groups[s]; !seen {
			order = append(order, s)
		}
		groups[s] = append(groups[s], r)
	}
	for _, s := range order {
		if err := h.check(s.IndexSealed(ctx, groups[s])); err != nil {
			return err
		}
	}
	return nil
}

// Sealed implements store.Index.
func (h *Store) Sealed(ctx context.Context, id uint64) ([]store.Sealed, error) {
	s, err := h.backend(ctx, id)
	if err != nil {
		return nil, err
	}
	out, err := s.Sealed(ctx, id)
	return out, h.check(err)
}

// SealedCount implements store.Index.
func (h *Store) SealedCount(ctx context.Context, id uint64) (uint64, error) {
	s, err := h.backend(ctx, id)
	if err != nil {
		return 0, err
	}
	n, err := s.SealedCount(ctx, id)
	return n, h.check(err)
}

// ClearIndex implements store.Index.
func (h *Store) ClearIndex(ctx context.Context, id uint64) error {
	s, err := h.backend(ctx, id)
	if err != nil {
		return err
	}
	return h.check(s.ClearIndex(ctx, id))
}

// PrepareEpoch implements store.Epochs on both backends. While Postgres is
// down the local epoch is prepared and the call is ErrUnavailable.
func (h *Store) PrepareEpoch(ctx context.Context, epoch uint64) error {
	if h.closed.Load() {
		return h.errClosed()
	}
	if err := h.local.PrepareEpoch(ctx, epoch); err != nil {
		return err
	}
	pg := h.remote()
	if pg == nil || !h.up.Load() {
		return store.Errorf(store.ErrUnavailable, "epoch %d is prepared locally but not in Postgres %s, which is unavailable", epoch, h.pgName)
	}
	return h.check(pg.PrepareEpoch(ctx, epoch))
}

// Epochs implements store.Epochs: the live epochs of either backend.
func (h *Store) Epochs(ctx context.Context) ([]uint64, error) {
	if h.closed.Load() {
		return nil, h.errClosed()
	}
	local, err := h.local.Epochs(ctx)
	if err != nil {
		return nil, err
	}
	pg := h.remote()
	if pg == nil || !h.up.Load() {
		return nil, store.Errorf(store.ErrUnavailable, "listing epochs needs Postgres %s, which is unavailable", h.pgName)
	}
	remote, err := pg.Epochs(ctx)
	if err != nil {
		return nil, h.check(err)
	}
	out := slices.Concat(local, remote)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Prune implements store.Epochs on both backends. While Postgres is down
// the local epoch is pruned and the call is ErrUnavailable, so a managed
// store retries it.
func (h *Store) Prune(ctx context.Context, epoch uint64) error {
	if h.closed.Load() {
		return h.errClosed()
	}
	if err := h.local.Prune(ctx, epoch); err != nil {
		return err
	}
	if err := h.pruneTails(ctx, epoch); err != nil {
		return err
	}
	h.forget(epoch)
	pg := h.remote()
	if pg == nil || !h.up.Load() {
		return store.Errorf(store.ErrUnavailable, "epoch %d is pruned locally but not yet in Postgres %s, which is unavailable", epoch, h.pgName)
	}
	if err := pg.Prune(ctx, epoch); err != nil {
		return h.check(err)
	}
	return h.check(h.syncMarker(ctx, pg))
}

// pruneTails drops the tails of epoch's escrows.
func (h *Store) pruneTails(ctx context.Context, epoch uint64) error {
	h.tailMu.Lock()
	defer h.tailMu.Unlock()
	h.mu.RLock()
	var ids []uint64
	for id, ti := range h.tailed {
		if ti.epoch == epoch {
			ids = append(ids, id)
		}
	}
	h.mu.RUnlock()
	for _, id := range ids {
		if err := h.tails.drop(ctx, id); err != nil {
			return err
		}
		h.mu.Lock()
		delete(h.tailed, id)
		h.mu.Unlock()
	}
	return nil
}

// quarantineErr is why escrow id is quarantined, or nil.
func (h *Store) quarantineErr(id uint64) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.quarantined[id]
}

// forget drops the cached routes of epoch.
func (h *Store) forget(epoch uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, r := range h.where {
		if r.epoch == epoch {
			delete(h.where, id)
		}
	}
}
