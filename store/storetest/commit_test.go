package storetest_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/storetest"
)

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
	c := storetest.NewCommitter(r, 0)
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
