package postgres_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/storetest"
)

// TestPostgres runs the tests that share one cluster, each in a database
// of its own. Tests that stop the server start their own.
func TestPostgres(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) *storetest.Target {
			return target(t, newDatabase(t, c))
		})
	})
	for name, fn := range map[string]func(*testing.T, *pgtest.Cluster){
		"PruneFindsEveryPartitionedTable": testPruneFindsEveryPartitionedTable,
		"ConcurrentPartitionCreators":     testConcurrentPartitionCreators,
		"ConcurrentMigrations":            testConcurrentMigrations,
		"Crash":                           testCrash,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, c)
		})
	}
}

var dbSeq atomic.Int64

// newDatabase creates a database of its own for one test.
func newDatabase(t testing.TB, c *pgtest.Cluster) string {
	name := fmt.Sprintf("t%d_%s", dbSeq.Add(1), strings.ToLower(strings.NewReplacer("/", "_", "=", "_").Replace(t.Name())))
	return c.CreateDatabase(t, name[:min(len(name), 60)])
}

func target(t *testing.T, dsn string) *storetest.Target {
	t.Helper()
	tg := &storetest.Target{Store: open(t, dsn)}
	tg.Reopen = func(t *testing.T) store.Store {
		require.NoError(t, tg.Store.Close())
		tg.Store = open(t, dsn)
		return tg.Store
	}
	tg.FailWrites = func(t *testing.T, table string) func() {
		return failWrites(t, dsn, table)
	}
	return tg
}

func open(t testing.TB, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// failWrites installs a trigger that aborts inserts into table, as a
// failing disk would fail the write mid-transaction.
func failWrites(t *testing.T, dsn, table string) func() {
	t.Helper()
	exec := func(q string) {
		conn, err := pgx.Connect(context.Background(), dsn)
		require.NoError(t, err)
		defer conn.Close(context.Background())
		_, err = conn.Exec(context.Background(), q)
		require.NoError(t, err)
	}
	exec(`CREATE OR REPLACE FUNCTION fail_write() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'injected write failure'; END $$`)
	exec("CREATE TRIGGER fail_" + table + " BEFORE INSERT ON " + table + " FOR EACH ROW EXECUTE FUNCTION fail_write()")
	return func() { exec("DROP TRIGGER fail_" + table + " ON " + table) }
}

func TestMain(m *testing.M) {
	// The crash writer reads its database from the PG* variables, as a host
	// does.
	storetest.MaybeRunCrashWriter(func(ctx context.Context) (store.Store, error) {
		return postgres.Open(ctx, postgres.Config{})
	})
	os.Exit(m.Run())
}

// testCrash kills a writer mid-append with SIGKILL and checks that the
// store reopens consistent with every acknowledged diff.
func testCrash(t *testing.T, c *pgtest.Cluster) {
	dsn := newDatabase(t, c)
	var env []string
	for k, v := range c.Env(dbName(t, dsn)) {
		env = append(env, k+"="+v)
	}
	storetest.Crash(t, env, func(t *testing.T) store.Store { return open(t, dsn) })
}

// dbName is the database a DSN names.
func dbName(t *testing.T, dsn string) string {
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	return strings.TrimPrefix(u.Path, "/")
}
