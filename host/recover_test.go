package host

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
)

// Attack 7: a host that restarts with its sealed-inference index lost (or
// holding rows no diff sealed) gets it back from the diffs as it recovers
// the session: store.Recover, the host's recovery, rebuilds it. Checked to
// fail before the fix: with the old Recover the index stayed empty after
// the second restart.
func TestAttackSealedIndexRebuiltWhenAHostRestarts(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.SealGraceNonces = 3 })
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, dir, sqlite.Options{})
	require.NoError(t, err)
	e := New(Config{Key: b.f.Hosts[0], Store: st, Escrows: b.chain, Executor: executor.Builtin{}, SnapshotEvery: 4})
	e.MarkReady()
	for i := range 12 {
		// Each inference is started, run and finished, so records seal.
		id := uint64(i + 1)
		exec := b.gw.Replica.Executor(id)
		d, err := b.gw.Next(sessiontest.Start(id, 1, 1), b.f.Confirm(exec, id, sessiontest.Timestamp(id)), b.f.Finish(exec, id, 1, 1))
		require.NoError(t, err)
		raw, _ := d.Marshal()
		_, err = e.ApplyDiff(ctx, 7, raw, nil)
		require.NoError(t, err)
	}
	want, err := st.Sealed(ctx, 7)
	require.NoError(t, err)
	require.Len(t, want, int(b.gw.Replica.SealedCount()))
	require.NotEmpty(t, want)

	restart := func() {
		t.Helper()
		require.NoError(t, st.Close())
		st, err = sqlite.Open(ctx, dir, sqlite.Options{})
		require.NoError(t, err)
		e = New(Config{Key: b.f.Hosts[0], Store: st, Escrows: b.chain, Executor: executor.Builtin{}})
		e.MarkReady()
		en, err := e.session(ctx, 7)
		require.NoError(t, err)
		require.Equal(t, b.gw.Replica.Root(), en.s.Root())
		en.mu.Unlock()
		got, err := st.Sealed(ctx, 7)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	restart()
	require.NoError(t, st.ClearIndex(ctx, 7))
	restart()
	stray := want[0]
	stray.InferenceID = 999
	require.NoError(t, st.IndexSealed(ctx, []store.Sealed{stray}))
	restart()
	require.NoError(t, st.Close())
}
