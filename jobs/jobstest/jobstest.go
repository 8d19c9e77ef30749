// Package jobstest is the job queue's conformance suite. Every driver runs
// it (jobs/sqlite, jobs/postgres) and passes every test; a new driver
// passes it or does not merge.
package jobstest

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/jobs"
)

// Target is one fresh, empty database of the driver under test.
type Target struct {
	// Open opens a queue on the target's database, closed when the test
	// ends. Queues opened on one target share its database, as processes
	// or hosts share one file or one Postgres.
	Open func(t testing.TB, opts jobs.Options) *jobs.Queue
	// Driver opens a bare driver on the target's database, closed when
	// the test ends, for the tests of the driver seam itself: a batch of
	// claims or finishes written as the Queue writes it.
	Driver func(t testing.TB) jobs.Driver
}

// Opener makes a Target for one test. Each test gets its own database
// (file, schema), so tests never share state.
type Opener func(t testing.TB) *Target

// Clock is a settable clock for Options.Now, so lease and lifetime tests
// move time instead of sleeping.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock at a fixed, realistic instant.
func NewClock() *Clock {
	return &Clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

// Now reads the clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Counter reads the value of a counter or gauge with the given labels from
// reg, 0 if it has no such series.
func Counter(t testing.TB, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metrics
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

// BenchClaim measures claims per second, by one worker and by eight
// claiming at once: b.N ready jobs are enqueued untimed, then claimed.
func BenchClaim(b *testing.B, open Opener) {
	for _, workers := range []int{1, 8} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			q := open(b).Open(b, jobs.Options{})
			ctx := context.Background()
			for i := range b.N {
				_, _, err := q.Enqueue(ctx, jobs.KindInference, binary.BigEndian.AppendUint64(nil, uint64(i)))
				require.NoError(b, err)
			}
			var claimed atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for claimed.Add(1) <= int64(b.N) {
						c, err := q.Claim(ctx, fmt.Sprint("bench", w), jobs.KindInference)
						if err != nil || c == nil {
							b.Errorf("claim: %v (job %v)", err, c)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
		})
	}
}
