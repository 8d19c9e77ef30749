package jobs

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// maxBatch caps one batch of claims or finishes. Larger batches amortize a
// commit further but make each caller in them wait for all of it.
const maxBatch = 128

// batcher is group commit for one kind of call: calls that arrive while a
// batch is being written join the next batch, so one statement and one
// commit serve all of them. There is no timer: a lone call is written at
// once and never waits for company.
//
// Each call gets its own answer from write, which returns one result per
// input, in order. An error that fails the whole batch is returned to
// every call in it.
type batcher[In, Out any] struct {
	write   func(ctx context.Context, ins []In) ([]Out, error)
	writers int // batches written at once, at most

	mu      sync.Mutex
	pending []*call[In, Out]
	running int // writer goroutines
}

type call[In, Out any] struct {
	ctx  context.Context
	in   In
	done chan result[Out] // buffered: the writer never blocks on a caller
}

type result[Out any] struct {
	out Out
	err error
}

func newBatcher[In, Out any](writers int, write func(ctx context.Context, ins []In) ([]Out, error)) *batcher[In, Out] {
	return &batcher[In, Out]{write: write, writers: writers}
}

// do writes in with the next batch and returns its own answer. If ctx ends
// before the batch is taken up, do returns ctx's error and in is not
// written; once its batch is being written, do waits for that write,
// which is cancelled only when every caller in it has given up.
func (b *batcher[In, Out]) do(ctx context.Context, in In) (Out, error) {
	if err := ctx.Err(); err != nil {
		var zero Out
		return zero, err
	}
	c := &call[In, Out]{ctx: ctx, in: in, done: make(chan result[Out], 1)}
	b.mu.Lock()
	b.pending = append(b.pending, c)
	if b.running < b.writers {
		b.running++
		go b.run()
	}
	b.mu.Unlock()
	select {
	case r := <-c.done:
		return r.out, r.err
	case <-ctx.Done():
		if b.withdraw(c) {
			var zero Out
			return zero, ctx.Err()
		}
		r := <-c.done
		return r.out, r.err
	}
}

// withdraw removes c from the calls waiting for a batch, and reports
// whether it was still there.
func (b *batcher[In, Out]) withdraw(c *call[In, Out]) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.Index(b.pending, c)
	if i < 0 {
		return false
	}
	b.pending = slices.Delete(b.pending, i, i+1)
	return true
}

// run writes batches until no call waits, then exits.
func (b *batcher[In, Out]) run() {
	for {
		b.mu.Lock()
		n := min(len(b.pending), maxBatch)
		if n == 0 {
			b.running--
			b.mu.Unlock()
			return
		}
		batch := slices.Clone(b.pending[:n])
		b.pending = slices.Delete(b.pending, 0, n)
		b.mu.Unlock()
		b.writeBatch(batch)
	}
}

func (b *batcher[In, Out]) writeBatch(batch []*call[In, Out]) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	ins := make([]In, len(batch))
	for i, c := range batch {
		ins[i] = c.in
	}
	outs, err := b.write(ctx, ins)
	for i, c := range batch {
		if err != nil {
			c.done <- result[Out]{err: err}
			continue
		}
		c.done <- result[Out]{out: outs[i]}
	}
}

// batchContext is the context of one batch's write: it ends when every
// caller's context has ended, since until then someone waits for the
// answer.
func batchContext[In, Out any](batch []*call[In, Out]) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, c := range batch {
		stops[i] = context.AfterFunc(c.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
