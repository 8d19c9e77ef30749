package legacy_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/legacy"
	"github.com/devshard/devshard/store/legacy/legacytest"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

type bundle struct {
	path   string
	dst    *sqlite.Store
	chains []*storetest.Chain
	n      []int
	ctx    context.Context
}

// epochOf puts escrow id in epoch id%3+1, as a chain lookup would.
func epochOf(_ context.Context, id uint64, _ *sessionpb.EscrowSnapshot) (uint64, error) {
	return id%3 + 1, nil
}

func setup(t *testing.T) *bundle {
	t.Helper()
	dir := t.TempDir()
	b := &bundle{path: filepath.Join(dir, "host.db"), ctx: t.Context(), n: []int{30, 0, 12, 45}}
	for i := range b.n {
		b.chains = append(b.chains, storetest.NewChain(uint64(600+i), uint64(600+i)%3+1, max(b.n[i], 1)))
	}
	legacytest.Write(t, b.path, b.chains, b.n)
	dst, err := sqlite.Open(t.Context(), filepath.Join(dir, "store"), sqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { dst.Close() })
	b.dst = dst
	return b
}

// requireMigrated checks that dst holds every legacy session, in its epoch,
// with its diffs and its sealed index.
func (b *bundle) requireMigrated(t *testing.T, s store.Store) {
	t.Helper()
	for i, c := range b.chains {
		id := c.Snapshot.EscrowId
		got, err := s.Session(b.ctx, id)
		require.NoError(t, err)
		require.Equal(t, id%3+1, got.Epoch)
		require.Equal(t, uint64(b.n[i]), got.LastNonce)
		diffs, err := s.Diffs(b.ctx, id, 1, 1000)
		require.NoError(t, err)
		require.Len(t, diffs, b.n[i])
		var sealed []store.Sealed
		for k, d := range diffs {
			require.Equal(t, c.Diffs[k].Data, d.Data)
			sealed = append(sealed, c.Diffs[k].Sealed...)
		}
		idx, err := s.Sealed(b.ctx, id)
		require.NoError(t, err)
		require.ElementsMatch(t, sealed, idx)
		if b.n[i] > 0 {
			sess, _, err := store.Recover(b.ctx, s, id, nil)
			require.NoError(t, err)
			require.Equal(t, c.Roots[b.n[i]-1], sess.Root())
		}
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var seen []string
	rep, err := legacy.Migrate(b.ctx, b.path, b.dst, epochOf, func(done, total int) { seen = append(seen, fmt.Sprintf("%d/%d", done, total)) })
	require.NoError(t, err)
	require.Equal(t, []string{"1/4", "2/4", "3/4", "4/4"}, seen, "progress after every session")
	require.Equal(t, 4, rep.Sessions)
	require.Equal(t, 30+12+45, rep.Diffs)
	require.Regexp(t, `host\.db\.migrated\.\d+$`, rep.RenamedTo)
	require.NoFileExists(t, b.path)
	require.FileExists(t, rep.RenamedTo)
	b.requireMigrated(t, b.dst)

	again, err := legacy.Migrate(b.ctx, b.path, b.dst, epochOf, nil)
	require.NoError(t, err, "idempotent: a second boot finds nothing to migrate")
	require.Equal(t, &legacy.Report{}, again)
	b.requireMigrated(t, b.dst)
}

// failing fails AppendDiffs after a number of calls, as a crash would stop
// the migration midway.
type failing struct {
	store.Store
	left atomic.Int32
}

func (f *failing) AppendDiffs(ctx context.Context, ds []store.Diff) error {
	if f.left.Add(-1) < 0 {
		return errors.New("injected failure")
	}
	return f.Store.AppendDiffs(ctx, ds)
}

func TestMigrateResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := &failing{Store: b.dst}
	f.left.Store(2)
	_, err := legacy.Migrate(b.ctx, b.path, f, epochOf, nil)
	require.ErrorContains(t, err, "injected failure")
	require.ErrorContains(t, err, "the next run resumes")
	require.FileExists(t, b.path, "an interrupted migration leaves the legacy file in place")

	rep, err := legacy.Migrate(b.ctx, b.path, b.dst, epochOf, nil)
	require.NoError(t, err)
	require.Equal(t, 4, rep.Sessions)
	require.Equal(t, 87, rep.Diffs)
	b.requireMigrated(t, b.dst)
}

func TestMigrateVerifiesRoots(t *testing.T) {
	t.Parallel()
	b := setup(t)
	db, err := sql.Open(sqlite.DriverName, b.path)
	require.NoError(t, err)
	_, err = db.Exec("UPDATE sessions SET root = zeroblob(32) WHERE escrow_id = 603")
	require.NoError(t, err)
	require.NoError(t, db.Close())

	_, err = legacy.Migrate(b.ctx, b.path, b.dst, epochOf, nil)
	require.ErrorContains(t, err, "escrow 603")
	require.ErrorContains(t, err, "verification failed")
	require.FileExists(t, b.path, "a migration that does not verify leaves the legacy file in place")
}

func TestMigrateSkipsPrunedEpochs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, b.dst.Prune(b.ctx, 1)) // escrows 600 and 603
	rep, err := legacy.Migrate(b.ctx, b.path, b.dst, epochOf, nil)
	require.NoError(t, err)
	require.Equal(t, []uint64{600, 603}, rep.Pruned)
	require.Equal(t, 2, rep.Sessions)
	require.Equal(t, 12, rep.Diffs)
	_, err = b.dst.Session(b.ctx, 600)
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestMigrateNoFile(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rep, err := legacy.Migrate(b.ctx, filepath.Join(t.TempDir(), "none.db"), b.dst, epochOf, nil)
	require.NoError(t, err)
	require.Equal(t, &legacy.Report{}, rep)
}
