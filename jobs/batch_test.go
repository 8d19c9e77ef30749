package jobs

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// gatedWriter is a batch write that records each batch and holds the
// first one until released, so the calls made meanwhile queue up.
type gatedWriter struct {
	release chan struct{}
	entered chan struct{} // closed when the first batch is being written
	fail    error         // returned for every batch after the first

	mu      sync.Mutex
	batches [][]int
}

func newGatedWriter() *gatedWriter {
	return &gatedWriter{release: make(chan struct{}), entered: make(chan struct{})}
}

func (w *gatedWriter) write(ctx context.Context, ins []int) ([]int, error) {
	w.mu.Lock()
	w.batches = append(w.batches, append([]int(nil), ins...))
	first := len(w.batches) == 1
	w.mu.Unlock()
	if first {
		close(w.entered)
		<-w.release
		return ins, nil
	}
	if w.fail != nil {
		return nil, w.fail
	}
	out := make([]int, len(ins))
	for i, in := range ins {
		out[i] = in * 10
	}
	return out, nil
}

// queued starts n calls (inputs 1 to n) behind the held first batch and
// returns their answers once the first batch is released.
func (w *gatedWriter) queued(t *testing.T, b *batcher[int, int], n int) (outs []int, errs []error) {
	t.Helper()
	first := make(chan error, 1)
	go func() { _, err := b.do(t.Context(), 0); first <- err }()
	<-w.entered
	outs, errs = make([]int, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { outs[i], errs[i] = b.do(t.Context(), i+1) })
	}
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.pending) == n
	}, 5*time.Second, time.Millisecond, "the calls wait behind the batch in flight")
	close(w.release)
	wg.Wait()
	require.NoError(t, <-first)
	return outs, errs
}

// Calls arriving while a batch is written are written together next, and
// each gets its own answer.
func TestBatchGathersCallsInFlight(t *testing.T) {
	t.Parallel()
	w := newGatedWriter()
	b := newBatcher(1, w.write)
	outs, errs := w.queued(t, b, 5)
	for i := range 5 {
		require.NoError(t, errs[i])
		require.Equal(t, (i+1)*10, outs[i], "call %d gets its own answer", i+1)
	}
	require.Len(t, w.batches, 2, "one batch in flight, one for everyone who came meanwhile")
	require.ElementsMatch(t, []int{1, 2, 3, 4, 5}, w.batches[1])
}

// A batch that fails returns its error to every call in it.
func TestBatchFailureReachesEveryCaller(t *testing.T) {
	t.Parallel()
	w := newGatedWriter()
	w.fail = errors.New("connection lost")
	b := newBatcher(1, w.write)
	_, errs := w.queued(t, b, 4)
	for i, err := range errs {
		require.ErrorIs(t, err, w.fail, "call %d", i+1)
	}
	require.Len(t, w.batches, 2)
}

// A call whose context ends while it waits for a batch leaves without
// being written; one already being written waits for the write, which
// goes on for the others in it.
func TestBatchCallerGivesUp(t *testing.T) {
	t.Parallel()
	w := newGatedWriter()
	b := newBatcher(1, w.write)
	first := make(chan error, 1)
	ctx, cancel := context.WithCancel(t.Context())
	go func() { _, err := b.do(ctx, 0); first <- err }()
	<-w.entered

	waiting, leave := context.WithCancel(t.Context())
	left := make(chan error, 1)
	go func() { _, err := b.do(waiting, 7); left <- err }()
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.pending) == 1
	}, 5*time.Second, time.Millisecond)
	leave()
	require.ErrorIs(t, <-left, context.Canceled)

	cancel() // the first call's batch is in flight: it waits for it
	select {
	case err := <-first:
		t.Fatalf("a call left its batch in flight: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(w.release)
	require.NoError(t, <-first)
	require.Equal(t, [][]int{{0}}, w.batches, "the call that left was never written")

	_, err := b.do(ctx, 1)
	require.ErrorIs(t, err, context.Canceled, "a call with an ended context is not written")
}
