package sqlite_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) *storetest.Target {
		dir := t.TempDir()
		return target(t, dir)
	})
}

// target opens a store in dir, closed when the test ends.
func target(t *testing.T, dir string) *storetest.Target {
	t.Helper()
	s := open(t, dir, sqlite.Options{})
	tg := &storetest.Target{Store: s}
	tg.Reopen = func(t *testing.T) store.Store {
		require.NoError(t, tg.Store.Close())
		tg.Store = open(t, dir, sqlite.Options{})
		return tg.Store
	}
	tg.FailWrites = func(t *testing.T, table string) func() {
		return failWrites(t, dir, table)
	}
	return tg
}

func open(t testing.TB, dir string, opts sqlite.Options) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// failWrites installs a trigger in every epoch file that aborts inserts
// into table, as a failing disk would fail the write mid-transaction.
func failWrites(t *testing.T, dir, table string) func() {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "epoch_*.db"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	exec := func(q string) {
		for _, f := range files {
			db, err := sql.Open(sqlite.DriverName, f)
			require.NoError(t, err)
			_, err = db.Exec(q)
			require.NoError(t, err)
			require.NoError(t, db.Close())
		}
	}
	exec("CREATE TRIGGER fail_" + table + " BEFORE INSERT ON " + table + " BEGIN SELECT RAISE(ABORT, 'injected write failure'); END")
	return func() { exec("DROP TRIGGER fail_" + table) }
}

func TestMain(m *testing.M) {
	storetest.MaybeRunCrashWriter(func(ctx context.Context) (store.Store, error) {
		return sqlite.Open(ctx, os.Getenv("STORETEST_DIR"), sqlite.Options{})
	})
	os.Exit(m.Run())
}

// TestCrash kills a writer mid-append with SIGKILL and checks that the
// store reopens consistent with every acknowledged diff.
func TestCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	storetest.Crash(t, []string{"STORETEST_DIR=" + dir}, func(t *testing.T) store.Store {
		return open(t, dir, sqlite.Options{})
	})
}

func TestPruneDeletesFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir, sqlite.Options{})
	storetest.FillEpoch(t, s, 3, 20, 2)
	require.FileExists(t, filepath.Join(dir, "epoch_3.db"))
	require.NoError(t, s.Prune(t.Context(), 3))
	require.NoFileExists(t, filepath.Join(dir, "epoch_3.db"), "the epoch's file leaves the layout before Prune returns")
	require.Eventually(t, func() bool {
		left, err := os.ReadDir(filepath.Join(dir, "_trash"))
		return err == nil && len(left) == 0
	}, 10*time.Second, 10*time.Millisecond, "the reclaimer deletes it")
}

func TestSecondProcessIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	open(t, dir, sqlite.Options{})
	_, err := sqlite.Open(t.Context(), dir, sqlite.Options{})
	require.ErrorContains(t, err, "in use by another process")
}
