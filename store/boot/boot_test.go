package boot_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/boot"
	"github.com/devshard/devshard/store/legacy/legacytest"
	"github.com/devshard/devshard/store/managed"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func open(t *testing.T, cfg boot.Config) *boot.Opened {
	t.Helper()
	o, err := boot.Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { o.Close() })
	return o
}

func TestSQLiteWithoutPGHOST(t *testing.T) {
	t.Parallel()
	o := open(t, boot.Config{Dir: t.TempDir(), Getenv: env(nil)})
	require.Equal(t, boot.SQLite, o.Mode)
	require.NoError(t, o.CreateSession(t.Context(), storetest.SyntheticSnapshot(1, 1)))

	_, err := boot.Open(t.Context(), boot.Config{Mode: boot.Hybrid, Dir: t.TempDir(), Getenv: env(nil)})
	require.ErrorContains(t, err, "set PGHOST")
}

func TestPostgresModesAndMarker(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	c.CreateDatabase(t, "host")
	pgEnv := env(c.Env("host"))
	dir := t.TempDir()
	ctx := t.Context()
	marker := func() *sqlite.Marker {
		t.Helper()
		m, err := sqlite.ReadMarker(dir)
		require.NoError(t, err)
		return m
	}
	refused := func(msg string) {
		t.Helper()
		_, err := boot.Open(ctx, boot.Config{Mode: boot.SQLite, Dir: dir, Getenv: pgEnv})
		require.ErrorContains(t, err, "still holds 1 live sessions", msg)
	}

	o, err := boot.Open(ctx, boot.Config{Dir: dir, Getenv: pgEnv})
	require.NoError(t, err)
	require.Equal(t, boot.Postgres, o.Mode, "PGHOST set: Postgres")
	require.Nil(t, marker(), "Postgres holds no sessions yet")
	require.NoError(t, o.CreateSession(ctx, storetest.SyntheticSnapshot(1, 1)))
	refused("the first session marks the directory while Postgres mode runs, not at its next boot")
	require.NoError(t, o.Close())

	h, err := boot.Open(ctx, boot.Config{Mode: boot.Hybrid, Dir: dir, Getenv: pgEnv})
	require.NoError(t, err)
	got, err := h.Session(ctx, 1)
	require.NoError(t, err, "hybrid serves the escrows Postgres holds")
	require.Equal(t, uint64(1), got.Epoch)
	require.NoError(t, h.Close())
	refused("SQLite-only boot refuses while Postgres holds sessions")

	o, err = boot.Open(ctx, boot.Config{Mode: boot.Postgres, Dir: dir, Getenv: pgEnv})
	require.NoError(t, err)
	require.NotNil(t, marker())
	require.NoError(t, o.Prune(ctx, 1))
	require.Nil(t, marker(), "pruning the last sessions removes the marker")
	require.NoError(t, o.Close())
	open(t, boot.Config{Mode: boot.SQLite, Dir: dir, Getenv: pgEnv})
}

func TestLegacyMigrationOnFirstBoot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "host.db")
	chains := []*storetest.Chain{storetest.NewChain(801, 5, 10), storetest.NewChain(802, 2, 4)}
	legacytest.Write(t, path, chains, []int{10, 4})
	epochOf := func(_ context.Context, id uint64, _ *sessionpb.EscrowSnapshot) (uint64, error) {
		return map[uint64]uint64{801: 5, 802: 2}[id], nil
	}
	cfg := boot.Config{
		Dir:       filepath.Join(dir, "store"),
		Legacy:    path,
		EpochOf:   epochOf,
		Retention: managed.Options{Current: func(context.Context) (uint64, error) { return 5, nil }},
		Getenv:    env(nil),
	}
	o, err := boot.Open(t.Context(), cfg)
	require.NoError(t, err)
	require.Equal(t, 1, o.Legacy.Sessions)
	require.Equal(t, []uint64{802}, o.Legacy.Pruned, "epoch 2 is outside the window of 3 epochs at epoch 5")
	last, err := o.LastNonce(t.Context(), 801)
	require.NoError(t, err)
	require.Equal(t, uint64(10), last)
	_, err = o.Session(t.Context(), 802)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, o.Close())

	again := open(t, cfg)
	require.Zero(t, again.Legacy.Sessions, "the second boot has nothing to migrate")
	last, err = again.LastNonce(t.Context(), 801)
	require.NoError(t, err)
	require.Equal(t, uint64(10), last)
}

// The configured durability reaches every SQLite connection the store
// opens, its epoch files' too; FULL unless NORMAL is asked.
func TestSynchronousReachesTheSQLiteFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o, err := boot.Open(t.Context(), boot.Config{Dir: dir, Getenv: env(nil)})
	require.NoError(t, err)
	require.Equal(t, "FULL", o.Synchronous)
	require.NoError(t, o.CreateSession(t.Context(), storetest.SyntheticSnapshot(1, 1)))
	require.NoError(t, o.Close())

	normal := open(t, boot.Config{Dir: dir, Synchronous: "NORMAL", Getenv: env(nil)})
	require.Equal(t, "NORMAL", normal.Synchronous, "read from the meta file's and epoch 1's connections")

	lower := open(t, boot.Config{Mode: boot.SQLite, Dir: t.TempDir(), Synchronous: "normal", Getenv: env(nil)})
	require.Equal(t, "NORMAL", lower.Synchronous, "the level is case-insensitive")
}
