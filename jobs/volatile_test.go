package jobs_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/jobstest"
	"github.com/devshard/devshard/jobs/sqlite"
)

// The kinds of these tests: a host's inferences are volatile, its
// validations durable.
var (
	kindInference = jobs.InferenceFor("h1")
	kindDurable   = jobs.KindValidation
)

// volatileBundle is a queue over SQLite whose inference kinds are
// volatile, with its fake clock.
type volatileBundle struct {
	path  string
	q     *jobs.Queue
	clock *jobstest.Clock
	reg   *prometheus.Registry
	ctx   context.Context
}

func setupVolatile(t *testing.T) *volatileBundle {
	t.Helper()
	b := &volatileBundle{path: filepath.Join(t.TempDir(), sqlite.FileName), clock: jobstest.NewClock(), reg: prometheus.NewRegistry(), ctx: t.Context()}
	b.q = b.open(t)
	return b
}

// open opens a queue on the bundle's file, its metrics in a fresh
// registry.
func (b *volatileBundle) open(t *testing.T) *jobs.Queue {
	t.Helper()
	d, err := sqlite.Open(b.ctx, b.path, sqlite.Options{})
	require.NoError(t, err)
	b.reg = prometheus.NewRegistry()
	q, err := jobs.New(d, jobs.Options{Now: b.clock.Now, PollInterval: time.Minute, Volatile: jobs.IsInference, Registerer: b.reg})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

func (b *volatileBundle) enqueue(t *testing.T, kind jobs.Kind, input string) jobs.Job {
	t.Helper()
	j, created, err := b.q.Enqueue(b.ctx, kind, []byte(input))
	require.NoError(t, err)
	require.True(t, created)
	return j
}

func (b *volatileBundle) claim(t *testing.T, kinds ...jobs.Kind) *jobs.Claim {
	t.Helper()
	c, err := b.q.Claim(b.ctx, "w1", kinds...)
	require.NoError(t, err)
	require.NotNil(t, c)
	return c
}

// durableIDs lists the ids the driver itself holds, read through a
// queue with nothing volatile on the same file.
func (b *volatileBundle) durableIDs(t *testing.T) []string {
	t.Helper()
	d, err := sqlite.Open(b.ctx, b.path, sqlite.Options{})
	require.NoError(t, err)
	defer d.Close()
	js, err := d.List(b.ctx, jobs.Filter{All: true})
	require.NoError(t, err)
	var ids []string
	for _, j := range js {
		ids = append(ids, j.ID)
	}
	return ids
}

func TestVolatileKeptInMemoryNotInDriver(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	inf := b.enqueue(t, kindInference, "prompt")
	val := b.enqueue(t, kindDurable, "check")
	require.Equal(t, []string{val.ID}, b.durableIDs(t), "only the durable job reaches the file")

	got, err := b.q.Get(b.ctx, inf.ID)
	require.NoError(t, err)
	require.Equal(t, jobs.Ready, got.State)
	require.Equal(t, []byte("prompt"), got.Input)
}

func TestVolatileDedup(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	j := b.enqueue(t, kindInference, "prompt")
	again, created, err := b.q.Enqueue(b.ctx, kindInference, []byte("prompt"))
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, j.ID, again.ID)

	c := b.claim(t)
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("out")))
	done, created, err := b.q.Enqueue(b.ctx, kindInference, []byte("prompt"))
	require.NoError(t, err)
	require.False(t, created, "a succeeded job's result is reused")
	require.Equal(t, []byte("out"), done.Result)
}

// Inference goes first whichever side holds it, and a claim that accepts
// only durable kinds never takes a volatile job.
func TestVolatilePriorityAcrossBoth(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	val := b.enqueue(t, kindDurable, "older")
	b.clock.Advance(time.Second)
	inf := b.enqueue(t, kindInference, "newer")

	c, err := b.q.Claim(b.ctx, "w1", kindDurable)
	require.NoError(t, err)
	require.Equal(t, val.ID, c.Job.ID)

	val2 := b.enqueue(t, kindDurable, "older2")
	require.Equal(t, inf.ID, b.claim(t).Job.ID, "inference before an older validation")
	require.Equal(t, val2.ID, b.claim(t).Job.ID)
	none, err := b.q.Claim(b.ctx, "w1")
	require.NoError(t, err)
	require.Nil(t, none)
}

func TestVolatileLeaseFence(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	b.enqueue(t, kindInference, "prompt")
	c := b.claim(t)

	forged := c.Lease
	forged.Token = "forged"
	err := b.q.Finish(b.ctx, forged, []byte("evil"))
	var stale *jobs.StaleLeaseError
	require.ErrorAs(t, err, &stale)
	require.True(t, stale.Exists)
	require.Equal(t, jobs.Running, stale.State)
	_, err = b.q.Heartbeat(b.ctx, forged)
	require.ErrorIs(t, err, jobs.ErrStaleLease)

	b.clock.Advance(time.Second)
	expires, err := b.q.Heartbeat(b.ctx, c.Lease)
	require.NoError(t, err)
	require.True(t, expires.After(c.Expires))
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("out")))
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("out")), "a replayed finish succeeds again")
	require.ErrorIs(t, b.q.Fail(b.ctx, c.Lease, "execution", "late"), jobs.ErrStaleLease)
}

// An expired lease is taken back and retried up to MaxTry, then failed;
// the late worker's result is refused; Reset revives the job.
func TestVolatileRescueRetryFail(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	j := b.enqueue(t, kindInference, "prompt")
	first := b.claim(t)
	b.clock.Advance(b.q.Options().HeartbeatTimeout + time.Second)
	r, err := b.q.Rescue(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []jobs.JobRef{{ID: j.ID, Kind: kindInference}}, r.Retried)

	second := b.claim(t)
	require.Equal(t, 2, second.Lease.Attempt)
	require.ErrorIs(t, b.q.Finish(b.ctx, first.Lease, []byte("late")), jobs.ErrStaleLease)

	b.clock.Advance(b.q.Options().HeartbeatTimeout + time.Second)
	r, err = b.q.Rescue(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []jobs.JobRef{{ID: j.ID, Kind: kindInference}}, r.Failed)
	got, err := b.q.Get(b.ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, jobs.Failed, got.State)
	require.Equal(t, jobs.ErrorClassLeaseExpired, got.ErrorClass)
	require.Equal(t, jobs.LeaseExpiredMessage(2), got.Error)

	require.NoError(t, b.q.Reset(b.ctx, j.ID))
	require.Equal(t, 1, b.claim(t).Lease.Attempt)
}

func TestVolatileLifetimeCountsFromFinish(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	j := b.enqueue(t, kindInference, "prompt")
	b.clock.Advance(b.q.Options().Lifetime)
	c := b.claim(t)
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("out")))

	b.clock.Advance(b.q.Options().Lifetime - time.Second)
	r, err := b.q.Rescue(b.ctx)
	require.NoError(t, err)
	require.Zero(t, r.Expired)
	b.clock.Advance(time.Second)
	r, err = b.q.Rescue(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, r.Expired)
	_, err = b.q.Get(b.ctx, j.ID)
	require.ErrorIs(t, err, jobs.ErrNotFound)
}

func TestVolatileClaimWaitWokenByEnqueue(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	got := make(chan *jobs.Claim, 1)
	go func() {
		c, _ := b.q.ClaimWait(b.ctx, "w1", []jobs.Kind{kindInference, kindDurable}, 30*time.Second)
		got <- c
	}()
	time.Sleep(50 * time.Millisecond)
	j := b.enqueue(t, kindInference, "prompt")
	select {
	case c := <-got:
		require.NotNil(t, c)
		require.Equal(t, j.ID, c.Job.ID)
	case <-time.After(10 * time.Second):
		t.Fatal("a volatile enqueue did not wake ClaimWait (its poll is a minute)")
	}
}

// List, Count, Remove and RemoveAll see both sides as one queue, and
// Remove is all or nothing across them.
func TestVolatileListCountRemove(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	val := b.enqueue(t, kindDurable, "a")
	b.clock.Advance(time.Second)
	inf := b.enqueue(t, kindInference, "b")
	b.clock.Advance(time.Second)
	val2 := b.enqueue(t, kindDurable, "c")

	js, err := b.q.List(b.ctx, jobs.Filter{})
	require.NoError(t, err)
	var ids []string
	for _, j := range js {
		ids = append(ids, j.ID)
	}
	require.Equal(t, []string{val.ID, inf.ID, val2.ID}, ids, "oldest first across both sides")
	n, err := b.q.Count(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n[jobs.Ready])

	err = b.q.Remove(b.ctx, inf.ID, "missing")
	require.ErrorIs(t, err, jobs.ErrNotFound)
	_, err = b.q.Get(b.ctx, inf.ID)
	require.NoError(t, err, "a refused remove removes nothing")

	require.NoError(t, b.q.Remove(b.ctx, inf.ID, val.ID))
	_, err = b.q.Get(b.ctx, inf.ID)
	require.ErrorIs(t, err, jobs.ErrNotFound)
	require.Equal(t, []string{val2.ID}, b.durableIDs(t))

	b.enqueue(t, kindInference, "d")
	removed, err := b.q.RemoveAll(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, removed)
}

// A removed running job's late result is refused as stale.
func TestVolatileRemoveRunningJob(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	b.enqueue(t, kindInference, "prompt")
	c := b.claim(t)
	require.NoError(t, b.q.Remove(b.ctx, c.Job.ID))
	err := b.q.Finish(b.ctx, c.Lease, []byte("out"))
	var stale *jobs.StaleLeaseError
	require.ErrorAs(t, err, &stale)
	require.False(t, stale.Exists)
}

// A restart loses the volatile jobs and keeps the durable ones.
func TestVolatileGoneAfterRestart(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	inf := b.enqueue(t, kindInference, "prompt")
	val := b.enqueue(t, kindDurable, "check")
	require.NoError(t, b.q.Close())

	b.q = b.open(t)
	_, err := b.q.Get(b.ctx, inf.ID)
	require.ErrorIs(t, err, jobs.ErrNotFound)
	_, err = b.q.Get(b.ctx, val.ID)
	require.NoError(t, err)
	n, err := b.q.Count(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n[jobs.Ready])
}

// Volatile jobs are counted as durable ones: by kind, and in the depth.
func TestVolatileMetrics(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	b.enqueue(t, kindInference, "a")
	b.enqueue(t, kindInference, "b")
	b.enqueue(t, kindDurable, "c")
	c := b.claim(t)
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, nil))
	stale := c.Lease
	stale.Token = "forged"
	_, err := b.q.Heartbeat(b.ctx, stale)
	require.ErrorIs(t, err, jobs.ErrStaleLease)
	b.claim(t)
	b.clock.Advance(b.q.Options().HeartbeatTimeout + time.Second)
	_, err = b.q.Rescue(b.ctx)
	require.NoError(t, err)

	inf := map[string]string{"kind": string(kindInference)}
	require.Equal(t, 2.0, jobstest.Counter(t, b.reg, "devshard_jobs_enqueued_total", inf))
	require.Equal(t, 2.0, jobstest.Counter(t, b.reg, "devshard_jobs_claimed_total", inf))
	require.Equal(t, 1.0, jobstest.Counter(t, b.reg, "devshard_jobs_succeeded_total", inf))
	require.Equal(t, 1.0, jobstest.Counter(t, b.reg, "devshard_jobs_retried_total", inf))
	require.Equal(t, 1.0, jobstest.Counter(t, b.reg, "devshard_jobs_stale_lease_refusals_total", map[string]string{"kind": string(kindInference), "call": "heartbeat"}))
	for state, want := range map[jobs.State]float64{jobs.Ready: 2, jobs.Running: 0, jobs.Succeeded: 1, jobs.Failed: 0} {
		require.Equal(t, want, jobstest.Counter(t, b.reg, "devshard_jobs_depth", map[string]string{"state": string(state)}), "depth %s", state)
	}
}

// ClaimN takes volatile jobs first, then durable ones, in one call, each
// under its own lease.
func TestVolatileClaimN(t *testing.T) {
	t.Parallel()
	b := setupVolatile(t)
	val := b.enqueue(t, kindDurable, "older")
	b.clock.Advance(time.Second)
	inf := b.enqueue(t, kindInference, "newer")
	cs, err := b.q.ClaimN(b.ctx, "pool", 4)
	require.NoError(t, err)
	require.Len(t, cs, 2)
	require.Equal(t, inf.ID, cs[0].Job.ID, "the volatile inference first")
	require.Equal(t, val.ID, cs[1].Job.ID)
	for _, c := range cs {
		require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("r")))
	}
	none, err := b.q.ClaimN(b.ctx, "pool", 4)
	require.NoError(t, err)
	require.Empty(t, none)
}
