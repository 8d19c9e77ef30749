package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/storetest"
)

// Regression test for DESIGN.md attack 6: pruning that misses a
// partitioned table lets storage grow without bound. A table added after
// the store was written (as a later migration would) is found in the
// catalog, partitioned for new epochs and pruned with them.
func testPruneFindsEveryPartitionedTable(t *testing.T, c *pgtest.Cluster) {
	b := setupPG(t, c)
	ctx := t.Context()
	require.NoError(t, b.s.CreateSession(ctx, storetest.SyntheticSnapshot(1, 4)))

	b.exec(t, "CREATE TABLE host_metrics (epoch_id bigint NOT NULL, v int) PARTITION BY RANGE (epoch_id)")
	// A partition the store did not name, made by hand.
	b.exec(t, "CREATE TABLE metrics_by_hand PARTITION OF host_metrics FOR VALUES FROM (4) TO (5)")
	require.NoError(t, b.s.PrepareEpoch(ctx, 5))
	b.exec(t, "INSERT INTO host_metrics VALUES (4, 1), (5, 2)")
	require.Contains(t, b.partitions(t, 5), "host_metrics_e5", "new epochs partition the new table too")

	require.NoError(t, b.s.Prune(ctx, 4))
	require.Empty(t, b.partitions(t, 4), "every partition of epoch 4 is dropped, whatever its table or name")
	require.Len(t, b.partitions(t, 5), 6, "epoch 5 keeps its partitions: five store tables and host_metrics")
	var left int
	require.NoError(t, b.conn.QueryRow(ctx, "SELECT count(*) FROM host_metrics").Scan(&left))
	require.Equal(t, 1, left)

	require.NoError(t, b.s.Prune(ctx, 5))
	require.Empty(t, b.partitions(t, 5))
}

func testConcurrentPartitionCreators(t *testing.T, c *pgtest.Cluster) {
	b := setupPG(t, c)
	// Separate stores have separate pools and caches, as separate host
	// processes would.
	stores := []*postgres.Store{b.s, open(t, b.dsn), open(t, b.dsn), open(t, b.dsn)}
	var wg sync.WaitGroup
	errs := make([]error, len(stores)*3)
	for i := range errs {
		wg.Go(func() { errs[i] = stores[i%len(stores)].PrepareEpoch(t.Context(), uint64(10+i%3)) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	for epoch := uint64(10); epoch < 13; epoch++ {
		require.Len(t, b.partitions(t, epoch), 5)
	}
}

func testConcurrentMigrations(t *testing.T, c *pgtest.Cluster) {
	dsn := newDatabase(t, c)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			s, err := postgres.Open(t.Context(), postgres.Config{DSN: dsn})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
}

func TestUnreachableServerIsUnavailable(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	dsn := newDatabase(t, c)
	s := open(t, dsn)
	ctx := t.Context()
	require.NoError(t, s.CreateSession(ctx, storetest.SyntheticSnapshot(1, 1)))
	c.StopImmediate(t)

	start := time.Now()
	err := s.AppendDiff(ctx, storetest.Synthetic(1, 1))
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.Contains(t, err.Error(), "unavailable")
	_, err = s.Session(ctx, 1)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.Less(t, time.Since(start), 10*time.Second, "fails fast instead of hanging")

	_, err = postgres.Open(ctx, postgres.Config{DSN: dsn})
	require.ErrorIs(t, err, store.ErrUnavailable)

	c.Restart(t)
	require.Eventually(t, func() bool { return s.AppendDiff(ctx, storetest.Synthetic(1, 1)) == nil }, 30*time.Second, 100*time.Millisecond)
}

type pgBundle struct {
	s    *postgres.Store
	dsn  string
	conn *pgx.Conn
}

func setupPG(t *testing.T, c *pgtest.Cluster) *pgBundle {
	t.Helper()
	dsn := newDatabase(t, c)
	conn, err := pgx.Connect(t.Context(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &pgBundle{s: open(t, dsn), dsn: dsn, conn: conn}
}

func (b *pgBundle) exec(t *testing.T, q string) {
	t.Helper()
	_, err := b.conn.Exec(t.Context(), q)
	require.NoError(t, err)
}

// partitions lists the partitions, of any table, whose range starts at
// epoch.
func (b *pgBundle) partitions(t *testing.T, epoch uint64) []string {
	t.Helper()
	rows, err := b.conn.Query(t.Context(), `
		SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE pg_get_expr(c.relpartbound, c.oid) LIKE 'FOR VALUES FROM (''' || $1::bigint || ''')%'
		ORDER BY 1`, int64(epoch))
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}
