package postgres_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store/storetest"
)

// TestLayoutChangesDoNotDeadlockReaders reads sessions (sessions, then
// diffs) and appends diffs while new epochs get their partitions and old
// ones are pruned. A layout change that locked the parent tables in
// another order than the readers (diffs before sessions) deadlocked them:
// SQLSTATE 40P01 on a session read.
func TestLayoutChangesDoNotDeadlockReaders(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	s := open(t, newDatabase(t, c))
	ctx := t.Context()
	const escrows = 4
	for id := uint64(1); id <= escrows; id++ {
		require.NoError(t, s.CreateSession(ctx, storetest.SyntheticSnapshot(id, 1)))
	}
	var (
		stop      atomic.Bool
		wg        sync.WaitGroup
		deadlocks atomic.Int64
		mu        sync.Mutex
		failures  []error
	)
	fail := func(err error) {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
			deadlocks.Add(1)
		}
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
	}
	for w := range 8 {
		wg.Go(func() {
			id := uint64(w%escrows + 1)
			for n := uint64(1); !stop.Load(); {
				if w < escrows {
					if err := s.AppendDiff(ctx, storetest.Synthetic(id, n)); err != nil {
						fail(err)
						return
					}
					n++
					continue
				}
				if _, err := s.Session(ctx, id); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	deadline := time.Now().Add(8 * time.Second)
	for epoch := uint64(2); time.Now().Before(deadline); epoch++ {
		require.NoError(t, s.CreateSession(ctx, storetest.SyntheticSnapshot(1000+epoch, epoch)))
		if epoch > 2 {
			require.NoError(t, s.Prune(ctx, epoch-1))
		}
	}
	stop.Store(true)
	wg.Wait()
	require.Zero(t, deadlocks.Load(), "readers deadlocked with layout changes")
	require.Empty(t, failures)
}
