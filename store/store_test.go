package store_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

func TestShouldSnapshot(t *testing.T) {
	t.Parallel()
	active, settled := sessionpb.Phase_PHASE_ACTIVE, sessionpb.Phase_PHASE_SETTLEMENT
	for _, tc := range []struct {
		every, nonce uint64
		phase        sessionpb.Phase
		want         bool
	}{
		{0, 500, active, true}, // default K = 500
		{0, 499, active, false},
		{0, 1000, active, true},
		{0, 0, active, false},
		{0, 7, settled, true}, // at settlement, whatever the nonce
		{10, 20, active, true},
		{10, 25, active, false},
	} {
		require.Equal(t, tc.want, store.SnapshotPolicy{Every: tc.every}.ShouldSnapshot(tc.nonce, tc.phase), "%+v", tc)
	}
	require.True(t, store.ShouldSnapshot(500, active))
}

func TestErrorsMatchTheirKind(t *testing.T) {
	t.Parallel()
	fork := store.NewForkError(7, 41, []byte("a"), []byte("b"))
	require.ErrorIs(t, fork, store.ErrFork)
	require.Contains(t, fork.Error(), "diff 41 of escrow 7 refused")
	gap := &store.GapError{EscrowID: 7, Nonce: 45, Last: 41}
	require.ErrorIs(t, gap, store.ErrNonceGap)
	require.Equal(t, "diff 45 of escrow 7 refused: the store holds nonces 1..41, so the next diff must be 42", gap.Error())
	wrapped := store.Wrap(store.ErrUnavailable, errors.New("connection refused"), "escrow %d is stored in Postgres", 42)
	require.ErrorIs(t, wrapped, store.ErrUnavailable)
	require.NotErrorIs(t, wrapped, store.ErrNotFound)
	require.Equal(t, "escrow 42 is stored in Postgres: connection refused", wrapped.Error())

	batch := store.BatchResult([]error{nil, gap, nil, fork})
	require.ErrorIs(t, batch, store.ErrFork)
	require.ErrorIs(t, batch, store.ErrNonceGap)
	require.Equal(t, []error{nil, gap, nil, fork}, store.DiffErrors(batch, 4))
	require.NoError(t, store.BatchResult([]error{nil, nil}))
	whole := errors.New("disk on fire")
	require.Equal(t, []error{whole, whole}, store.DiffErrors(whole, 2))
}

// recorder is a BatchAppender that records batch sizes, refuses nonce 0
// diffs and blocks each commit until released.
type recorder struct {
	mu      sync.Mutex
	batches []int
	entered chan struct{}
	gate    chan struct{}
}

func (r *recorder) AppendDiffs(_ context.Context, ds []store.Diff) error {
	r.entered <- struct{}{}
	<-r.gate
	r.mu.Lock()
	r.batches = append(r.batches, len(ds))
	r.mu.Unlock()
	errs := make([]error, len(ds))
	for i, d := range ds {
		if d.Nonce == 0 {
			errs[i] = store.Errorf(store.ErrInvalid, "nonce 0")
		}
	}
	return store.BatchResult(errs)
}

func TestCommitterGroupsWaitingWriters(t *testing.T) {
	t.Parallel()
	r := &recorder{entered: make(chan struct{}, 10), gate: make(chan struct{})}
	c := store.NewCommitter(r, 0)
	defer c.Close()
	ctx := t.Context()

	// The first append starts a commit that blocks; the next ten queue
	// behind it and go out together.
	first := make(chan error, 1)
	go func() { first <- c.Append(ctx, store.Diff{EscrowID: 1, Nonce: 1}) }()
	<-r.entered
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Go(func() { errs[i] = c.Append(ctx, store.Diff{EscrowID: uint64(2 + i), Nonce: uint64(i % 5)}) })
	}
	require.Eventually(t, func() bool { return c.Queued() == 10 }, 10*time.Second, time.Millisecond)
	close(r.gate)
	wg.Wait()
	require.NoError(t, <-first)
	for i, err := range errs {
		if i%5 == 0 {
			require.ErrorIs(t, err, store.ErrInvalid, "each writer gets its own outcome")
		} else {
			require.NoError(t, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Equal(t, []int{1, 10}, r.batches)
}
