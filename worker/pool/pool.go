// Package pool chooses the executor that runs a job. Among the executors
// that serve the job's kind and model, are ready and have a free slot, it
// draws one with probability proportional to its weight, and takes the
// slot in the same step, under one lock, so that two jobs never both take
// an executor's last slot (DESIGN.md, known bug 20).
package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/executor/ndjson"
)

// Executor is what the pool needs of an executor: worker/child's Child is
// one.
//
// The pool calls TryAcquire and Release with its own lock held, so the
// choice and the taking of a slot are one step; an executor whose slots
// are only ever taken through one pool needs no lock of its own for them.
// TryAcquire takes a slot if the executor is ready and has one free, and
// reports whether it did; Release gives back a slot TryAcquire took.
type Executor interface {
	Name() string
	Serves(kind ndjson.Kind, model string) bool
	Weight() int
	TryAcquire() bool
	Release()
}

// recheck is how often a waiting Acquire looks again without being told
// of a freed slot: an executor becomes ready (a child restarts) on its
// own, without the pool hearing of it.
const recheck = 50 * time.Millisecond

// Pool is a fixed set of executors to choose among.
type Pool[E Executor] struct {
	execs []E

	mu    sync.Mutex
	rng   *rand.Rand
	freed chan struct{} // closed, and replaced, whenever a slot is released
}

// New returns a pool of execs.
func New[E Executor](execs ...E) *Pool[E] {
	return &Pool[E]{
		execs: execs,
		rng:   rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		freed: make(chan struct{}),
	}
}

// NoExecutorError is a job that no executor of the pool serves, however
// long it waited.
type NoExecutorError struct {
	Kind      ndjson.Kind
	Model     string
	Executors []string // the pool's executors, by name
}

func (e *NoExecutorError) Error() string {
	return fmt.Sprintf("no executor serves %s for model %q (this worker's executors: %s)", e.Kind, e.Model, strings.Join(e.Executors, ", "))
}

// Acquire chooses an executor for a job of kind on model and takes one of
// its slots; release gives the slot back when the job ends, and may be
// called more than once. When executors serve the job but none is ready
// with a free slot, Acquire waits for one until ctx ends. When none
// serves it at all (or only ones of weight zero), it fails at once with a
// *NoExecutorError.
func (p *Pool[E]) Acquire(ctx context.Context, kind ndjson.Kind, model string) (e E, release func(), err error) {
	for {
		p.mu.Lock()
		e, took, serves := p.pick(kind, model)
		freed := p.freed
		p.mu.Unlock()
		switch {
		case took:
			return e, p.releaser(e), nil
		case !serves:
			names := make([]string, len(p.execs))
			for i, x := range p.execs {
				names[i] = x.Name()
			}
			return e, nil, &NoExecutorError{Kind: kind, Model: model, Executors: names}
		}
		timer := time.NewTimer(recheck)
		select {
		case <-ctx.Done():
			timer.Stop()
			return e, nil, fmt.Errorf("no executor free for %s of model %q: %w", kind, model, ctx.Err())
		case <-freed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// pick draws among the executors that serve the job, by weight, and
// takes a slot of the one drawn. One that has none free is dropped and
// the draw repeated among the rest, which is the same as drawing by
// weight among those with a free slot. It reports whether it took one,
// and whether any executor serves the job. The caller holds p.mu.
func (p *Pool[E]) pick(kind ndjson.Kind, model string) (e E, took, serves bool) {
	var cands []E
	var weights []int
	total := 0
	for _, x := range p.execs {
		if w := x.Weight(); w > 0 && x.Serves(kind, model) {
			cands, weights, total = append(cands, x), append(weights, w), total+w
		}
	}
	serves = len(cands) > 0
	for len(cands) > 0 {
		r, i := p.rng.IntN(total), 0
		for r >= weights[i] {
			r -= weights[i]
			i++
		}
		if cands[i].TryAcquire() {
			return cands[i], true, serves
		}
		total -= weights[i]
		cands, weights = append(cands[:i], cands[i+1:]...), append(weights[:i], weights[i+1:]...)
	}
	return e, false, serves
}

// releaser gives e's slot back, once, and wakes the Acquires waiting.
func (p *Pool[E]) releaser(e E) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			e.Release()
			close(p.freed)
			p.freed = make(chan struct{})
		})
	}
}
