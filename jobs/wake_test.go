package jobs_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/sqlite"
)

// countingDriver counts the claims the driver is asked for, one per
// holder, however the queue batches them.
type countingDriver struct {
	jobs.Driver
	holders atomic.Int64
}

func (d *countingDriver) Claim(ctx context.Context, p jobs.ClaimParams) ([]jobs.Job, error) {
	d.holders.Add(int64(len(p.Holders)))
	return d.Driver.Claim(ctx, p)
}

// countingQueue is a queue over SQLite that polls once a minute, so only
// a wake-up gets a waiter a job within a test.
func countingQueue(t *testing.T) (*jobs.Queue, *countingDriver) {
	t.Helper()
	d, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), sqlite.FileName), sqlite.Options{})
	require.NoError(t, err)
	cd := &countingDriver{Driver: d}
	q, err := jobs.New(cd, jobs.Options{PollInterval: time.Minute, Volatile: jobs.IsInference})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q, cd
}

// An enqueue wakes one of the waiting claimers, not all: with six idle
// waiters the driver is asked for seven claims (each waiter's first look,
// then the woken one's), where waking all asked for twelve.
func TestEnqueueWakesOneWaiter(t *testing.T) {
	t.Parallel()
	q, d := countingQueue(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	const waiters = 6
	got := make(chan *jobs.Claim, waiters)
	for i := range waiters {
		go func() {
			c, _ := q.ClaimWait(ctx, fmt.Sprintf("w%d", i), []jobs.Kind{jobs.KindValidation}, time.Minute)
			got <- c
		}()
	}
	require.Eventually(t, func() bool { return d.holders.Load() == waiters }, 5*time.Second, time.Millisecond, "every waiter looks once before it waits")
	time.Sleep(20 * time.Millisecond) // and is waiting

	j, _, err := q.Enqueue(t.Context(), jobs.KindValidation, []byte("one job"))
	require.NoError(t, err)
	select {
	case c := <-got:
		require.NotNil(t, c)
		require.Equal(t, j.ID, c.Job.ID)
	case <-time.After(wokenWithin):
		t.Fatal("no waiter was woken by the enqueue")
	}
	time.Sleep(100 * time.Millisecond) // time for a herd, were there one
	require.EqualValues(t, waiters+1, d.holders.Load(), "only the woken waiter looked again")
	require.Empty(t, got, "the other waiters still wait")
}

// An idle claimer of volatile kinds only (an inference worker's) never
// asks the driver: no job of theirs is there.
func TestClaimOfVolatileKindsSkipsTheDriver(t *testing.T) {
	t.Parallel()
	q, d := countingQueue(t)
	c, err := q.ClaimWait(t.Context(), "w", []jobs.Kind{kindInference}, 30*time.Millisecond)
	require.NoError(t, err)
	require.Nil(t, c)
	cs, err := q.ClaimN(t.Context(), "w", 4, kindInference)
	require.NoError(t, err)
	require.Empty(t, cs)
	require.Zero(t, d.holders.Load())

	_, err = q.Claim(t.Context(), "w", kindInference, jobs.KindValidation)
	require.NoError(t, err)
	require.EqualValues(t, 1, d.holders.Load(), "a durable kind among them still asks")
}

// No wake-up is lost while waiters come and go: every job enqueued while
// half the waiters leave (their wake, if they had one, passed on) is
// claimed, by wake-ups alone (the poll is a minute).
func TestNoWakeLostWhileWaitersLeave(t *testing.T) {
	t.Parallel()
	for round := range 20 {
		q, _ := countingQueue(t)
		const stayers, leavers, jobCount = 6, 6, 6
		got := make(chan *jobs.Claim, stayers+leavers)
		wait := func(ctx context.Context, name string) {
			if c, _ := q.ClaimWait(ctx, name, []jobs.Kind{kindInference}, time.Minute); c != nil {
				got <- c
			}
		}
		stay, stop := context.WithCancel(t.Context())
		defer stop()
		leaving, leave := context.WithCancel(stay)
		defer leave()
		for i := range stayers {
			go wait(stay, fmt.Sprintf("stay%d", i))
		}
		for i := range leavers {
			go wait(leaving, fmt.Sprintf("leave%d", i))
		}
		time.Sleep(20 * time.Millisecond) // all are waiting
		for i := range jobCount {
			if i == jobCount/2 {
				leave() // some wakes are on their way to leavers now
			}
			_, _, err := q.Enqueue(t.Context(), kindInference, fmt.Appendf(nil, "round %d job %d", round, i))
			require.NoError(t, err)
		}
		for range jobCount {
			select {
			case c := <-got:
				require.NotNil(t, c)
			case <-time.After(wokenWithin):
				stop()
				t.Fatalf("round %d: a job is ready and a waiter waits, but no wake-up reached it", round)
			}
		}
		stop()
	}
}

// wokenWithin is how soon a woken waiter must have its job: far below the
// minute's poll, so only a wake-up passes.
const wokenWithin = 2 * time.Second
