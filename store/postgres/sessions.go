package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

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

// HighestEscrow is the highest escrow id with a session here, 0 when there
// is none.
func (s *Store) HighestEscrow(ctx context.Context) (uint64, error) {
	ctx, cancel, err := s.op(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	var id int64
	if err := s.pool.QueryRow(ctx, "SELECT COALESCE(MAX(escrow_id), 0) FROM sessions").Scan(&id); err != nil {
		return 0, s.fail(err, "read the highest escrow id")
	}
	return uint64(id), nil
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
