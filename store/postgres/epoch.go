package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/store"
)

// lockKey is the advisory lock serializing the layout changes of one epoch
// (partition creation, pruning) or the creation of one escrow.
const (
	lockEpoch  = "SELECT pg_advisory_xact_lock(hashtextextended('devshard/store/epoch/' || $1::bigint, 0))"
	lockEscrow = "SELECT pg_advisory_xact_lock(hashtextextended('devshard/store/escrow/' || $1::bigint, 0))"
)

// readOrder is the order in which the store's statements lock the parent
// tables: a session read takes sessions, then diffs; an append takes diffs,
// sealed, then signatures.
var readOrder = []string{"sessions", "diffs", "sealed", "signatures", "snapshots"}

// lockParents takes every parent table in ACCESS EXCLUSIVE mode, in
// readOrder (tables it does not name after it, by name), before a layout
// change. Creating or dropping a partition locks its parent; left to the
// DDL, those locks would come in catalog order (diffs before sessions),
// the reverse of a session read's, and the two would deadlock (40P01).
// ONLY: readers lock a parent before its partitions, so the parents alone
// exclude them.
func lockParents(ctx context.Context, tx pgx.Tx, parents []string) error {
	ordered := slices.Clone(parents)
	rank := func(name string) int {
		if i := slices.Index(readOrder, name); i >= 0 {
			return i
		}
		return len(readOrder)
	}
	slices.SortStableFunc(ordered, func(a, b string) int { return cmp.Compare(rank(a), rank(b)) })
	names := make([]string, len(ordered))
	for i, p := range ordered {
		names[i] = pgx.Identifier{p}.Sanitize()
	}
	_, err := tx.Exec(ctx, "LOCK TABLE ONLY "+strings.Join(names, ", ")+" IN ACCESS EXCLUSIVE MODE")
	return err
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
		var missing []string
		for _, parent := range parts.parents {
			if !parts.covered(parent, epoch) {
				missing = append(missing, parent)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if err := lockParents(ctx, tx, parts.parents); err != nil {
			return err
		}
		for _, parent := range missing {
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
		if err := lockParents(ctx, tx, parts.parents); err != nil {
			return err
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
