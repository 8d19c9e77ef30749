package managed_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/managed"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

// flaky fails Prune of one epoch while fail is set.
type flaky struct {
	store.Store
	epoch uint64
	fail  atomic.Bool
}

func (f *flaky) Prune(ctx context.Context, epoch uint64) error {
	if epoch == f.epoch && f.fail.Load() {
		return errors.New("injected prune failure")
	}
	return f.Store.Prune(ctx, epoch)
}

type bundle struct {
	m     *managed.Store
	inner *flaky
	ctx   context.Context
}

func setup(t *testing.T, opts managed.Options) *bundle {
	t.Helper()
	s, err := sqlite.Open(t.Context(), t.TempDir(), sqlite.Options{})
	require.NoError(t, err)
	inner := &flaky{Store: s}
	m := managed.New(inner, opts)
	t.Cleanup(func() { m.Close() })
	return &bundle{m: m, inner: inner, ctx: t.Context()}
}

// fill creates one session in each epoch from..to.
func (b *bundle) fill(t *testing.T, from, to uint64) {
	t.Helper()
	for e := from; e <= to; e++ {
		require.NoError(t, b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(100+e, e)))
	}
}

func (b *bundle) epochs(t *testing.T) []uint64 {
	t.Helper()
	epochs, err := b.m.Epochs(b.ctx)
	require.NoError(t, err)
	return epochs
}

func TestKeepsLastEpochs(t *testing.T) {
	t.Parallel()
	b := setup(t, managed.Options{})
	b.fill(t, 1, 6)
	require.NoError(t, b.m.SetEpoch(b.ctx, 6))
	require.Equal(t, []uint64{4, 5, 6, 7}, b.epochs(t), "the last 3 are kept and the next is prepared ahead")
	require.Equal(t, uint64(4), b.m.Cursor())
	_, err := b.m.Session(b.ctx, 103)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = b.m.Session(b.ctx, 104)
	require.NoError(t, err)

	require.NoError(t, b.m.SetEpoch(b.ctx, 5), "an older epoch is ignored")
	require.Equal(t, []uint64{4, 5, 6, 7}, b.epochs(t))
}

func TestCursorAdvancesOnlyOnSuccess(t *testing.T) {
	t.Parallel()
	b := setup(t, managed.Options{Keep: 2})
	b.fill(t, 1, 5)
	b.inner.epoch = 2
	b.inner.fail.Store(true)
	err := b.m.SetEpoch(b.ctx, 5)
	require.ErrorContains(t, err, "prune epoch 2")
	require.Equal(t, uint64(2), b.m.Cursor(), "epoch 1 was pruned, epoch 2 was not")
	require.Equal(t, []uint64{2, 3, 4, 5, 6}, b.epochs(t), "nothing after the failure is pruned")

	b.inner.fail.Store(false)
	require.NoError(t, b.m.CatchUp(b.ctx))
	require.Equal(t, uint64(4), b.m.Cursor())
	require.Equal(t, []uint64{4, 5, 6}, b.epochs(t))
}

func TestCreateInPrunedEpochIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, managed.Options{})
	b.fill(t, 1, 2)
	require.NoError(t, b.m.SetEpoch(b.ctx, 6))
	err := b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(9, 2))
	require.ErrorIs(t, err, store.ErrEpochPruned)
	require.Contains(t, err.Error(), "escrow 9 belongs to epoch 2")
	require.Contains(t, err.Error(), "keeps epochs 4..6")
	err = b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(10, 3))
	require.ErrorIs(t, err, store.ErrEpochPruned, "epoch 3 is outside the window, though never stored")
	require.NoError(t, b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(11, 4)))
	require.NoError(t, b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(12, 7)))
}

func TestPeriodicCatchUp(t *testing.T) {
	t.Parallel()
	var current atomic.Uint64
	current.Store(2)
	var mu sync.Mutex
	var bgErrs []error
	b := setup(t, managed.Options{
		Interval: 10 * time.Millisecond,
		Current:  func(context.Context) (uint64, error) { return current.Load(), nil },
		OnError: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			bgErrs = append(bgErrs, err)
		},
	})
	b.fill(t, 1, 2)
	// A quiet host: nobody calls SetEpoch, the epoch moves on regardless.
	current.Store(9)
	require.Eventually(t, func() bool {
		epochs, err := b.m.Epochs(b.ctx)
		return err == nil && len(epochs) == 1 && epochs[0] == 10 && b.m.Cursor() == 7
	}, 10*time.Second, 10*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, bgErrs)
}

// guard is a fake Unsettled: the epochs it names still have open escrows.
type guard struct {
	mu   sync.Mutex
	open map[uint64]bool
	err  error
}

func (g *guard) unsettled(_ context.Context, epoch uint64) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open[epoch], g.err
}

func (g *guard) settle(epoch uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.open, epoch)
}

func TestUnsettledEpochIsNeitherPrunedNorRefused(t *testing.T) {
	t.Parallel()
	g := &guard{open: map[uint64]bool{2: true}}
	b := setup(t, managed.Options{Keep: 2, Unsettled: g.unsettled})
	b.fill(t, 1, 5)
	require.NoError(t, b.m.SetEpoch(b.ctx, 5))
	require.Equal(t, []uint64{2, 3, 4, 5, 6}, b.epochs(t), "epoch 2 has open escrows: it and every later epoch stay")
	require.Equal(t, uint64(2), b.m.Cursor())
	require.NoError(t, b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(20, 2)),
		"an escrow of an epoch with open escrows is served though the clock left it behind")
	err := b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(21, 3))
	require.ErrorIs(t, err, store.ErrEpochPruned, "epoch 3 has none open and is below the window")

	g.settle(2)
	require.NoError(t, b.m.CatchUp(b.ctx))
	require.Equal(t, []uint64{4, 5, 6}, b.epochs(t), "once settled, the epoch is pruned at the next pass")
	require.Equal(t, uint64(4), b.m.Cursor())
}

func TestUnsettledGuardFailsSafe(t *testing.T) {
	t.Parallel()
	g := &guard{err: errors.New("chain unreachable")}
	b := setup(t, managed.Options{Keep: 2, Unsettled: g.unsettled})
	b.fill(t, 1, 5)
	require.NoError(t, b.m.SetEpoch(b.ctx, 5))
	require.Equal(t, []uint64{1, 2, 3, 4, 5, 6}, b.epochs(t), "a guard that cannot answer prunes nothing")
	require.NoError(t, b.m.CreateSession(b.ctx, storetest.SyntheticSnapshot(20, 1)))
}
