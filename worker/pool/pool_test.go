package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor/ndjson"
)

// fake is a slot holder. Its count is a plain int, as the Executor
// contract allows, so a pool that took slots outside its lock would race
// (and -race reports it) and could overfill it.
type fake struct {
	name     string
	weight   int
	capacity int
	model    string
	ready    atomic.Bool

	inUse int // taken slots, under the pool's lock

	running, peak atomic.Int64 // jobs actually running on it, seen by the jobs
}

func newFake(name string, weight, capacity int) *fake {
	f := &fake{name: name, weight: weight, capacity: capacity, model: "m"}
	f.ready.Store(true)
	return f
}

func (f *fake) Name() string { return f.name }
func (f *fake) Serves(kind ndjson.Kind, model string) bool {
	return kind == ndjson.KindInference && model == f.model
}
func (f *fake) Weight() int { return f.weight }
func (f *fake) TryAcquire() bool {
	if !f.ready.Load() || f.inUse >= f.capacity {
		return false
	}
	f.inUse++
	return true
}
func (f *fake) Release() { f.inUse-- }

// chiSquared is Pearson's statistic for counts against the shares of
// weights.
func chiSquared(counts, weights []int) float64 {
	n, total := 0, 0
	for i := range counts {
		n += counts[i]
		total += weights[i]
	}
	x := 0.0
	for i := range counts {
		want := float64(n) * float64(weights[i]) / float64(total)
		d := float64(counts[i]) - want
		x += d * d / want
	}
	return x
}

// critical3 is the chi-squared critical value for 3 degrees of freedom
// at p = 0.001.
const critical3 = 16.266

// TestExecutorChoiceFollowsWeights: over 20,000 jobs, each executor is
// chosen in proportion to its weight, the last one included (DESIGN.md,
// known bug 20: a picker that never chose its last executor).
func TestExecutorChoiceFollowsWeights(t *testing.T) {
	t.Parallel()
	weights := []int{1, 2, 3, 4}
	execs := make([]*fake, len(weights))
	for i, w := range weights {
		execs[i] = newFake(fmt.Sprint("e", i), w, 1)
	}
	p := New(execs...)
	p.rng = rand.New(rand.NewPCG(1, 2)) // a fixed draw, so the test cannot flake
	counts := make([]int, len(execs))
	for range 20000 {
		e, release, err := p.Acquire(context.Background(), ndjson.KindInference, "m")
		require.NoError(t, err)
		for i := range execs {
			if execs[i] == e {
				counts[i]++
			}
		}
		release()
	}
	x := chiSquared(counts, weights)
	require.Less(t, x, critical3, "counts %v for weights %v", counts, weights)

	// The same test fails a picker that never chooses the last executor.
	starved := []int{counts[0] + counts[3]/3, counts[1] + counts[3]/3, counts[2] + counts[3] - 2*(counts[3]/3), 0}
	require.Greater(t, chiSquared(starved, weights), critical3)
}

// TestExecutorChoiceSkipsFullAndUnready: a draw never lands on an
// executor that is busy or not ready, and a freed slot is taken again.
func TestExecutorChoiceSkipsFullAndUnready(t *testing.T) {
	t.Parallel()
	a, b, c := newFake("a", 100, 1), newFake("b", 1, 1), newFake("c", 100, 1)
	c.ready.Store(false)
	p := New(a, b, c)
	first, releaseFirst, err := p.Acquire(context.Background(), ndjson.KindInference, "m")
	require.NoError(t, err)
	second, releaseSecond, err := p.Acquire(context.Background(), ndjson.KindInference, "m")
	require.NoError(t, err)
	require.ElementsMatch(t, []*fake{a, b}, []*fake{first, second})

	// All full: the next Acquire waits, and gets the slot released.
	got := make(chan *fake, 1)
	go func() {
		e, release, err := p.Acquire(context.Background(), ndjson.KindInference, "m")
		if err == nil {
			defer release()
		}
		got <- e
	}()
	select {
	case e := <-got:
		t.Fatalf("acquired %s with every slot taken", e.name)
	case <-time.After(100 * time.Millisecond):
	}
	releaseFirst()
	releaseFirst() // a second call is harmless
	require.Equal(t, first, <-got)
	releaseSecond()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	a.ready.Store(false)
	b.ready.Store(false)
	_, _, err = p.Acquire(ctx, ndjson.KindInference, "m")
	require.ErrorIs(t, err, context.DeadlineExceeded, "none ready: wait, bounded by ctx")

	// An executor that becomes ready on its own is noticed.
	go func() { time.Sleep(30 * time.Millisecond); c.ready.Store(true) }()
	e, release, err := p.Acquire(context.Background(), ndjson.KindInference, "m")
	require.NoError(t, err)
	require.Equal(t, c, e)
	release()
}

func TestExecutorChoiceFailsAtOnceWhenNoneServes(t *testing.T) {
	t.Parallel()
	zero := newFake("idle", 0, 4)
	p := New(newFake("gpu0", 1, 1), zero)
	start := time.Now()
	_, _, err := p.Acquire(context.Background(), ndjson.KindValidation, "m")
	var none *NoExecutorError
	require.ErrorAs(t, err, &none)
	require.Equal(t, `no executor serves validation for model "m" (this worker's executors: gpu0, idle)`, err.Error())
	_, _, err = p.Acquire(context.Background(), ndjson.KindInference, "other")
	require.ErrorAs(t, err, &none)

	_, _, err = New(zero).Acquire(context.Background(), ndjson.KindInference, "m")
	require.ErrorAs(t, err, &none, "weight zero takes no work")
	require.Less(t, time.Since(start), time.Second)
}

// TestExecutorCapacityUnderConcurrency: many jobs at once never run more
// on an executor than its capacity (DESIGN.md, known bug 20). Run it
// with -race.
func TestExecutorCapacityUnderConcurrency(t *testing.T) {
	t.Parallel()
	execs := []*fake{newFake("a", 1, 1), newFake("b", 2, 2), newFake("c", 3, 3)}
	p := New(execs...)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 50 {
				e, release, err := p.Acquire(context.Background(), ndjson.KindInference, "m")
				if err != nil {
					t.Error(err)
					return
				}
				n := e.running.Add(1)
				for {
					peak := e.peak.Load()
					if n <= peak || e.peak.CompareAndSwap(peak, n) {
						break
					}
				}
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
				e.running.Add(-1)
				release()
			}
		})
	}
	wg.Wait()
	for _, e := range execs {
		require.LessOrEqual(t, e.peak.Load(), int64(e.capacity), "executor %s", e.name)
		require.Positive(t, e.peak.Load(), "executor %s never ran", e.name)
		require.Zero(t, e.inUse)
	}
}
