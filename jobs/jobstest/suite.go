package jobstest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/jobs"
)

// Run runs the conformance suite against a driver.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(*testing.T, *bundle)
	}{
		{"EnqueueAndGet", testEnqueueAndGet},
		{"Dedup", testDedup},
		{"RemovedJobIsCreatedAfresh", testRemovedJobIsCreatedAfresh},
		{"ClaimPriority", testClaimPriority},
		{"ClaimNothingReady", testClaimNothingReady},
		{"ConcurrentClaimsNeverShare", testConcurrentClaimsNeverShare},
		{"ClaimBatch", testClaimBatch},
		{"ClaimN", testClaimN},
		{"FinishBatchMixedLeases", testFinishBatchMixedLeases},
		{"ConcurrentFinishesMixedLeases", testConcurrentFinishesMixedLeases},
		{"AttackLateResultAfterRetry", testAttackLateResultAfterRetry},
		{"ForgedTokenRefused", testForgedTokenRefused},
		{"FinishReplay", testFinishReplay},
		{"HeartbeatExtendsLease", testHeartbeatExtendsLease},
		{"RetryUpToMaxTryThenFail", testRetryUpToMaxTryThenFail},
		{"WorkerFailureIsFinal", testWorkerFailureIsFinal},
		{"ResetIsAtomic", testResetIsAtomic},
		{"RemoveIsAtomic", testRemoveIsAtomic},
		{"RemoveRunningJob", testRemoveRunningJob},
		{"RemoveAll", testRemoveAll},
		{"LifetimeCountsFromFinish", testLifetimeCountsFromFinish},
		{"List", testList},
		{"SizeBounds", testSizeBounds},
		{"InvalidArguments", testInvalidArguments},
		{"LongPollWakesOnEnqueue", testLongPollWakesOnEnqueue},
		{"LongPollWakesOnRescueAndReset", testLongPollWakesOnRescueAndReset},
		{"LongPollTimesOut", testLongPollTimesOut},
		{"Metrics", testMetrics},
		{"SharedDatabase", testSharedDatabase},
		{"ConcurrentRescuersRetryOnce", testConcurrentRescuersRetryOnce},
		{"RunRescuesPeriodically", testRunRescuesPeriodically},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, setup(t, open))
		})
	}
}

// bundle is one test's state: a queue on a fresh database, its clock and
// its metrics.
type bundle struct {
	target *Target
	q      *jobs.Queue
	clock  *Clock
	reg    *prometheus.Registry
	ctx    context.Context
}

// options are the suite's defaults: the real defaults for leases and
// lifetime, a fake clock, and a poll interval long enough that a test
// passing within it proves a wake-up, not a poll.
func (b *bundle) options() jobs.Options {
	return jobs.Options{Now: b.clock.Now, PollInterval: time.Minute}
}

func setup(t *testing.T, open Opener) *bundle {
	t.Helper()
	b := &bundle{target: open(t), clock: NewClock(), reg: prometheus.NewRegistry(), ctx: t.Context()}
	opts := b.options()
	opts.Registerer = b.reg
	b.q = b.target.Open(t, opts)
	return b
}

// reopen replaces the bundle's queue with one opened with opts (the clock
// stays the bundle's).
func (b *bundle) reopen(t *testing.T, opts jobs.Options) {
	t.Helper()
	opts.Now = b.clock.Now
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Minute
	}
	b.reg = prometheus.NewRegistry()
	opts.Registerer = b.reg
	require.NoError(t, b.q.Close())
	b.q = b.target.Open(t, opts)
}

func (b *bundle) enqueue(t *testing.T, kind jobs.Kind, input string) jobs.Job {
	t.Helper()
	j, created, err := b.q.Enqueue(b.ctx, kind, []byte(input))
	require.NoError(t, err)
	require.True(t, created, "job %s %q is new", kind, input)
	return j
}

func (b *bundle) claim(t *testing.T, worker string, kinds ...jobs.Kind) *jobs.Claim {
	t.Helper()
	c, err := b.q.Claim(b.ctx, worker, kinds...)
	require.NoError(t, err)
	require.NotNil(t, c, "worker %s expected a job", worker)
	return c
}

func (b *bundle) get(t *testing.T, id string) jobs.Job {
	t.Helper()
	j, err := b.q.Get(b.ctx, id)
	require.NoError(t, err)
	return j
}

func (b *bundle) rescue(t *testing.T) jobs.RescueReport {
	t.Helper()
	r, err := b.q.Rescue(b.ctx)
	require.NoError(t, err)
	require.False(t, r.Skipped)
	return r
}

// expire moves the clock past the lease of everything running now.
func (b *bundle) expire() {
	b.clock.Advance(b.q.Options().HeartbeatTimeout + time.Second)
}

func requireStale(t *testing.T, err error, lease jobs.Lease) *jobs.StaleLeaseError {
	t.Helper()
	require.ErrorIs(t, err, jobs.ErrStaleLease)
	var stale *jobs.StaleLeaseError
	require.ErrorAs(t, err, &stale)
	require.Equal(t, lease, stale.Lease)
	return stale
}

func testEnqueueAndGet(t *testing.T, b *bundle) {
	before := b.clock.Now()
	j := b.enqueue(t, jobs.KindInference, "prompt")
	require.Equal(t, jobs.JobID(jobs.KindInference, []byte("prompt")), j.ID)
	require.Len(t, j.ID, 64, "hex sha256")
	require.Equal(t, jobs.Ready, j.State)
	require.Equal(t, jobs.KindInference, j.Kind)
	require.Equal(t, []byte("prompt"), j.Input)
	require.Zero(t, j.Attempt)
	require.True(t, j.Created.Equal(before), "created %v, clock %v", j.Created, before)
	require.True(t, j.Started.IsZero())
	require.Equal(t, j, b.get(t, j.ID))

	empty := b.enqueue(t, jobs.KindValidation, "")
	require.Equal(t, []byte{}, b.get(t, empty.ID).Input, "an empty input is an input")

	_, err := b.q.Get(b.ctx, jobs.JobID(jobs.KindInference, []byte("other")))
	require.ErrorIs(t, err, jobs.ErrNotFound)
	var nf *jobs.NotFoundError
	require.ErrorAs(t, err, &nf)
}

// An input that has a job, in any state, returns that job until the job is
// removed; the same input under another kind is another job.
func testDedup(t *testing.T, b *bundle) {
	j := b.enqueue(t, jobs.KindInference, "same")
	other := b.enqueue(t, jobs.KindValidation, "same")
	require.NotEqual(t, j.ID, other.ID)

	again := func(want jobs.State) jobs.Job {
		t.Helper()
		got, created, err := b.q.Enqueue(b.ctx, jobs.KindInference, []byte("same"))
		require.NoError(t, err)
		require.False(t, created, "enqueued again while %s", want)
		require.Equal(t, j.ID, got.ID)
		require.Equal(t, want, got.State)
		require.Empty(t, got.LeaseToken, "the lease token is the claimer's alone")
		return got
	}
	again(jobs.Ready)
	c := b.claim(t, "w1", jobs.KindInference)
	require.Equal(t, 1, again(jobs.Running).Attempt)
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("answer")))
	require.Equal(t, []byte("answer"), again(jobs.Succeeded).Result, "a finished job's result is reused")

	c = b.claim(t, "w1", jobs.KindValidation)
	require.NoError(t, b.q.Fail(b.ctx, c.Lease, "execution", "boom"))
	got, created, err := b.q.Enqueue(b.ctx, jobs.KindValidation, []byte("same"))
	require.NoError(t, err)
	require.False(t, created, "a failed job stays failed until reset or removed")
	require.Equal(t, jobs.Failed, got.State)

	n, err := b.q.Count(b.ctx)
	require.NoError(t, err)
	require.Equal(t, map[jobs.State]int{jobs.Succeeded: 1, jobs.Failed: 1}, n)
}

func testRemovedJobIsCreatedAfresh(t *testing.T, b *bundle) {
	j := b.enqueue(t, jobs.KindInference, "x")
	c := b.claim(t, "w1")
	require.NoError(t, b.q.Fail(b.ctx, c.Lease, "execution", "boom"))
	require.NoError(t, b.q.Remove(b.ctx, j.ID))

	b.clock.Advance(time.Minute)
	fresh, created, err := b.q.Enqueue(b.ctx, jobs.KindInference, []byte("x"))
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, j.ID, fresh.ID)
	require.Equal(t, jobs.Ready, fresh.State)
	require.Zero(t, fresh.Attempt)
	require.Empty(t, fresh.Error)
	require.True(t, fresh.Created.After(j.Created))
}

// Inference before validation, then oldest first, then by id; a worker
// gets only the kinds it accepts.
func testClaimPriority(t *testing.T, b *bundle) {
	v1 := b.enqueue(t, jobs.KindValidation, "v1")
	b.clock.Advance(time.Second)
	i1 := b.enqueue(t, jobs.KindInference, "i1")
	b.clock.Advance(time.Second)
	v2 := b.enqueue(t, jobs.KindValidation, "v2")
	i2 := b.enqueue(t, jobs.KindInference, "i2") // same instant as v2
	b.clock.Advance(time.Second)
	x := b.enqueue(t, jobs.Kind("embedding"), "x")
	b.clock.Advance(time.Second)
	i3 := b.enqueue(t, jobs.InferenceFor("host1"), "i3") // a host's own inferences are inferences too

	require.Equal(t, v1.ID, b.claim(t, "validator", jobs.KindValidation).Job.ID, "a validation worker gets validation jobs")
	var got []string
	for range 5 {
		got = append(got, b.claim(t, "w").Job.ID)
	}
	require.Equal(t, []string{i1.ID, i2.ID, i3.ID, v2.ID, x.ID}, got)
}

func testClaimNothingReady(t *testing.T, b *bundle) {
	c, err := b.q.Claim(b.ctx, "w")
	require.NoError(t, err)
	require.Nil(t, c)

	b.enqueue(t, jobs.KindValidation, "v")
	c, err = b.q.Claim(b.ctx, "w", jobs.KindInference)
	require.NoError(t, err)
	require.Nil(t, c, "no job of the kinds asked for")
}

// Many workers claiming at once: every job is claimed exactly once.
func testConcurrentClaimsNeverShare(t *testing.T, b *bundle) {
	const n, workers = 120, 8
	for i := range n {
		kind := jobs.KindInference
		if i%3 == 0 {
			kind = jobs.KindValidation
		}
		b.enqueue(t, kind, fmt.Sprint("job ", i))
	}
	var mu sync.Mutex
	holder := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	tokens := map[string]bool{}
	for w := range workers {
		worker := fmt.Sprint("w", w)
		// Some workers take validation only, so one batch of claims
		// holds calls for different kinds.
		var kinds []jobs.Kind
		if w%4 == 0 {
			kinds = []jobs.Kind{jobs.KindValidation}
		}
		wg.Go(func() {
			for {
				c, err := b.q.Claim(b.ctx, worker, kinds...)
				if err != nil {
					errs <- err
					return
				}
				if c == nil {
					return
				}
				mu.Lock()
				prev, dup := holder[c.Job.ID]
				holder[c.Job.ID] = worker
				reused := tokens[c.Lease.Token]
				tokens[c.Lease.Token] = true
				mu.Unlock()
				switch {
				case dup:
					errs <- fmt.Errorf("job %s claimed by %s and by %s", c.Job.ID, prev, worker)
					return
				case reused:
					errs <- fmt.Errorf("lease token of job %s issued twice", c.Job.ID)
					return
				case c.Job.Worker != worker:
					errs <- fmt.Errorf("worker %s got job %s held by %s", worker, c.Job.ID, c.Job.Worker)
					return
				case kinds != nil && c.Job.Kind != jobs.KindValidation:
					errs <- fmt.Errorf("validation worker %s got a %s job", worker, c.Job.Kind)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, holder, n)
	cnt, err := b.q.Count(b.ctx)
	require.NoError(t, err)
	require.Equal(t, map[jobs.State]int{jobs.Running: n}, cnt)
}

// One batch of claims on the driver: the n-th job in claim order goes to
// the n-th holder under its own token, and when fewer jobs are ready than
// holders, no job is taken without a holder to run it.
func testClaimBatch(t *testing.T, b *bundle) {
	v := b.enqueue(t, jobs.KindValidation, "v")
	b.clock.Advance(time.Second)
	i1 := b.enqueue(t, jobs.KindInference, "i1")
	b.clock.Advance(time.Second)
	i2 := b.enqueue(t, jobs.KindInference, "i2")
	d := b.target.Driver(t)
	now := b.clock.Now()
	holders := []jobs.Holder{{Worker: "a", Token: "token-a"}, {Worker: "b", Token: "token-b"}, {Worker: "c", Token: "token-c"}}

	got, err := d.Claim(b.ctx, jobs.ClaimParams{Kinds: []jobs.Kind{jobs.KindInference}, Holders: holders, Now: now, Expires: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, got, 2, "two inference jobs for three holders")
	for k, want := range []jobs.Job{i1, i2} {
		require.Equal(t, want.ID, got[k].ID, "holder %d gets job %d in claim order", k, k)
		require.Equal(t, jobs.Running, got[k].State)
		require.Equal(t, 1, got[k].Attempt)
		require.Equal(t, holders[k].Worker, got[k].Worker)
		require.Equal(t, holders[k].Token, got[k].LeaseToken)
		require.True(t, got[k].LeaseExpires.Equal(now.Add(time.Minute)))
	}
	n, err := b.q.Count(b.ctx)
	require.NoError(t, err)
	require.Equal(t, map[jobs.State]int{jobs.Running: 2, jobs.Ready: 1}, n, "nothing claimed beyond the jobs handed out")

	got, err = d.Claim(b.ctx, jobs.ClaimParams{Holders: holders[2:], Now: now, Expires: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, v.ID, got[0].ID)
	require.Equal(t, "c", got[0].Worker)
	got, err = d.Claim(b.ctx, jobs.ClaimParams{Holders: holders, Now: now, Expires: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Empty(t, got, "nothing ready")

	require.NoError(t, b.q.Finish(b.ctx, jobs.Lease{JobID: i2.ID, Attempt: 1, Token: "token-b"}, []byte("b")),
		"the lease of a batch claim fences like any other")
}

// One batch of finishes on the driver, valid and stale leases mixed:
// each answer is its own, as if the finishes ran one after another.
func testFinishBatchMixedLeases(t *testing.T, b *bundle) {
	var leases []jobs.Lease
	for _, in := range []string{"a", "b", "c", "d", "e"} {
		b.enqueue(t, jobs.KindInference, in)
		leases = append(leases, b.claim(t, "w").Lease)
	}
	a, bb, c, gone, e := leases[0], leases[1], leases[2], leases[3], leases[4]
	require.NoError(t, b.q.Remove(b.ctx, gone.JobID))
	forged, wrongAttempt := bb, c
	forged.Token = "00000000000000000000000000000000"
	wrongAttempt.Attempt = 2
	now := b.clock.Now()
	ok := func(r string) jobs.Outcome { return jobs.Outcome{State: jobs.Succeeded, Result: []byte(r), Now: now} }
	fs := []jobs.FinishParams{
		{Lease: a, Outcome: ok("a")},
		{Lease: forged, Outcome: ok("forged")},
		{Lease: wrongAttempt, Outcome: ok("wrong attempt")},
		{Lease: gone, Outcome: ok("gone")},
		{Lease: bb, Outcome: ok("b")}, // the real lease after the forged one
		{Lease: a, Outcome: ok("a again, otherwise")},
		{Lease: e, Outcome: jobs.Outcome{State: jobs.Failed, ErrorClass: "execution", Error: "boom", Now: now}},
	}
	got, err := b.target.Driver(t).Finish(b.ctx, fs)
	require.NoError(t, err)
	require.Len(t, got, len(fs))

	applied := func(i int, state jobs.State) {
		t.Helper()
		require.True(t, got[i].Applied, "finish %d", i)
		require.Equal(t, fs[i].Lease.JobID, got[i].Current.ID)
		require.Equal(t, state, got[i].Current.State)
	}
	applied(0, jobs.Succeeded)
	require.Equal(t, []byte("a"), got[0].Current.Result)
	applied(4, jobs.Succeeded)
	applied(6, jobs.Failed)
	require.Equal(t, "boom", got[6].Current.Error)
	for _, i := range []int{1, 2} {
		require.False(t, got[i].Applied, "finish %d", i)
		require.Equal(t, fs[i].Lease.JobID, got[i].Current.ID, "finish %d", i)
	}
	require.False(t, got[3].Applied)
	require.Nil(t, got[3].Current, "the removed job is gone")
	require.False(t, got[5].Applied, "the second finish of one lease is refused")
	require.Equal(t, jobs.Succeeded, got[5].Current.State)
	require.Equal(t, []byte("a"), got[5].Current.Result, "and sees the first one's result")

	require.Equal(t, []byte("a"), b.get(t, a.JobID).Result)
	require.Equal(t, []byte("b"), b.get(t, bb.JobID).Result)
	require.Equal(t, jobs.Running, b.get(t, c.JobID).State)
	require.Equal(t, jobs.Failed, b.get(t, e.JobID).State)
}

// Many finishes at once through the queue, so they share batches: valid
// leases, forged ones, replays of one finish and two outcomes of one
// lease. Each caller gets exactly its own answer.
func testConcurrentFinishesMixedLeases(t *testing.T, b *bundle) {
	const n = 24
	type call struct {
		lease  jobs.Lease
		result string
		want   string // "ok", "stale", or "either" for two outcomes of one lease
	}
	var calls []call
	for i := range n {
		b.enqueue(t, jobs.KindInference, fmt.Sprint(i))
		l := b.claim(t, "w").Lease
		r := fmt.Sprint("result ", i)
		switch i % 4 {
		case 0:
			calls = append(calls, call{l, r, "ok"})
		case 1:
			forged := l
			forged.Token = fmt.Sprintf("%032d", i)
			calls = append(calls, call{forged, r, "stale"}, call{l, r, "ok"})
		case 2:
			calls = append(calls, call{l, r, "ok"}, call{l, r, "ok"}) // a replay
		case 3:
			calls = append(calls, call{l, r, "either"}, call{l, r + " otherwise", "either"})
		}
	}
	errs := make([]error, len(calls))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() {
			<-start
			errs[i] = b.q.Finish(b.ctx, c.lease, []byte(c.result))
		})
	}
	close(start)
	wg.Wait()

	won := map[string]string{} // job id: the result that applied
	for i, c := range calls {
		switch c.want {
		case "ok":
			require.NoError(t, errs[i], "call %d", i)
			won[c.lease.JobID] = c.result
		case "stale":
			requireStale(t, errs[i], c.lease)
		case "either":
			if errs[i] == nil {
				require.NotContains(t, won, c.lease.JobID, "two outcomes of one lease both accepted")
				won[c.lease.JobID] = c.result
			} else {
				requireStale(t, errs[i], c.lease)
			}
		}
	}
	require.Len(t, won, n, "every job finished once")
	for id, r := range won {
		got := b.get(t, id)
		require.Equal(t, jobs.Succeeded, got.State)
		require.Equal(t, r, string(got.Result), "job %s holds the result of the call that was told it applied", id)
	}
}

// DESIGN.md attack 15: a late result from a worker whose lease expired
// must not overwrite the result of the retry. The late worker's heartbeat,
// finish and fail are all refused, before and after the retry finishes.
func testAttackLateResultAfterRetry(t *testing.T, b *bundle) {
	j := b.enqueue(t, jobs.KindInference, "prompt")
	late := b.claim(t, "slow")
	require.Equal(t, 1, late.Lease.Attempt)

	b.expire()
	require.Equal(t, []jobs.JobRef{{ID: j.ID, Kind: jobs.KindInference}}, b.rescue(t).Retried)
	retry := b.claim(t, "fast")
	require.Equal(t, 2, retry.Lease.Attempt)
	require.NotEqual(t, late.Lease.Token, retry.Lease.Token)

	_, err := b.q.Heartbeat(b.ctx, late.Lease)
	stale := requireStale(t, err, late.Lease)
	require.True(t, stale.Exists)
	require.Equal(t, 2, stale.Attempt)
	require.Equal(t, jobs.Running, stale.State)
	require.Contains(t, err.Error(), "attempt 1 is stale: the job is at attempt 2 now (running)")

	requireStale(t, b.q.Finish(b.ctx, late.Lease, []byte("late")), late.Lease)
	require.NoError(t, b.q.Finish(b.ctx, retry.Lease, []byte("retry")))
	requireStale(t, b.q.Finish(b.ctx, late.Lease, []byte("late")), late.Lease)
	requireStale(t, b.q.Fail(b.ctx, late.Lease, "execution", "late"), late.Lease)

	got := b.get(t, j.ID)
	require.Equal(t, jobs.Succeeded, got.State)
	require.Equal(t, []byte("retry"), got.Result, "the retry's result stands")
	require.Equal(t, "fast", got.Worker)
	require.Equal(t, 2, got.Attempt)

	kind := string(jobs.KindInference)
	require.Equal(t, 1.0, Counter(t, b.reg, "devshard_jobs_stale_lease_refusals_total", map[string]string{"kind": kind, "call": "heartbeat"}))
	require.Equal(t, 2.0, Counter(t, b.reg, "devshard_jobs_stale_lease_refusals_total", map[string]string{"kind": kind, "call": "finish"}))
	require.Equal(t, 1.0, Counter(t, b.reg, "devshard_jobs_stale_lease_refusals_total", map[string]string{"kind": kind, "call": "fail"}))
	require.Equal(t, 1.0, Counter(t, b.reg, "devshard_jobs_succeeded_total", map[string]string{"kind": kind}))
}

// The token fences as well as the attempt: a lease naming the current
// attempt with a token that was never issued for it is refused, and so is
// the right token on another attempt.
func testForgedTokenRefused(t *testing.T, b *bundle) {
	b.enqueue(t, jobs.KindInference, "p")
	c := b.claim(t, "w")
	forged := c.Lease
	forged.Token = "00000000000000000000000000000000"
	_, err := b.q.Heartbeat(b.ctx, forged)
	require.ErrorContains(t, requireStale(t, err, forged), "token does not match")
	requireStale(t, b.q.Finish(b.ctx, forged, []byte("forged")), forged)

	wrongAttempt := c.Lease
	wrongAttempt.Attempt = 2
	requireStale(t, b.q.Finish(b.ctx, wrongAttempt, []byte("forged")), wrongAttempt)

	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("real")))
	require.Equal(t, []byte("real"), b.get(t, c.Lease.JobID).Result)
}

// A worker that lost the reply to its Finish may send it again; the same
// lease with another outcome is refused.
func testFinishReplay(t *testing.T, b *bundle) {
	b.enqueue(t, jobs.KindInference, "p")
	c := b.claim(t, "w")
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("r")))
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("r")), "a replay is accepted")
	err := b.q.Finish(b.ctx, c.Lease, []byte("other"))
	requireStale(t, err, c.Lease)
	require.ErrorContains(t, err, "the job has finished already (succeeded)")
	requireStale(t, b.q.Fail(b.ctx, c.Lease, "execution", "x"), c.Lease)
	_, err = b.q.Heartbeat(b.ctx, c.Lease)
	requireStale(t, err, c.Lease)
	require.Equal(t, []byte("r"), b.get(t, c.Lease.JobID).Result)
}

func testHeartbeatExtendsLease(t *testing.T, b *bundle) {
	j := b.enqueue(t, jobs.KindInference, "p")
	c := b.claim(t, "w")
	timeout := b.q.Options().HeartbeatTimeout
	require.True(t, c.Expires.Equal(b.clock.Now().Add(timeout)))

	b.clock.Advance(timeout - time.Second)
	exp, err := b.q.Heartbeat(b.ctx, c.Lease)
	require.NoError(t, err)
	require.True(t, exp.Equal(b.clock.Now().Add(timeout)))
	got := b.get(t, j.ID)
	require.True(t, got.Heartbeat.Equal(b.clock.Now()))
	require.True(t, got.LeaseExpires.Equal(exp))

	b.clock.Advance(timeout - time.Second) // past the claim's expiry, within the heartbeat's
	require.Empty(t, b.rescue(t).Retried, "the heartbeat extended the lease")
	require.Equal(t, jobs.Running, b.get(t, j.ID).State)

	// A lease is lost when the rescuer takes it back: until then its
	// holder may still heartbeat, and the lease lives on.
	b.clock.Advance(2 * time.Second)
	_, err = b.q.Heartbeat(b.ctx, c.Lease)
	require.NoError(t, err)
	require.Empty(t, b.rescue(t).Retried)

	b.expire()
	require.Len(t, b.rescue(t).Retried, 1)
	_, err = b.q.Heartbeat(b.ctx, c.Lease)
	requireStale(t, err, c.Lease)
	require.ErrorContains(t, err, "the lease was taken back and the job waits for another worker")
	require.Equal(t, jobs.Ready, b.get(t, j.ID).State, "a stale heartbeat revives nothing")
}

// A job whose worker stops heartbeating is retried until it has had MaxTry
// claims, then fails; only Reset revives it.
func testRetryUpToMaxTryThenFail(t *testing.T, b *bundle) {
	b.reopen(t, jobs.Options{MaxTry: 3})
	j := b.enqueue(t, jobs.KindValidation, "v")
	for try := 1; try <= 3; try++ {
		c := b.claim(t, fmt.Sprint("w", try))
		require.Equal(t, try, c.Lease.Attempt)
		b.expire()
		r := b.rescue(t)
		if try < 3 {
			require.Equal(t, []jobs.JobRef{{ID: j.ID, Kind: jobs.KindValidation}}, r.Retried, "try %d", try)
			require.Empty(t, r.Failed)
			got := b.get(t, j.ID)
			require.Equal(t, jobs.Ready, got.State)
			require.Equal(t, try, got.Attempt, "the expired try is counted")
			require.Empty(t, got.Worker)
		} else {
			require.Empty(t, r.Retried)
			require.Equal(t, []jobs.JobRef{{ID: j.ID, Kind: jobs.KindValidation}}, r.Failed)
		}
	}
	got := b.get(t, j.ID)
	require.Equal(t, jobs.Failed, got.State)
	require.Equal(t, jobs.ErrorClassLeaseExpired, got.ErrorClass)
	require.Equal(t, "lease expired after 3 tries", got.Error)
	require.True(t, got.Finished.Equal(b.clock.Now()))
	c, err := b.q.Claim(b.ctx, "w")
	require.NoError(t, err)
	require.Nil(t, c, "a failed job is not claimed again")
	require.Empty(t, b.rescue(t).Retried, "nor rescued again")

	require.NoError(t, b.q.Reset(b.ctx, j.ID))
	got = b.get(t, j.ID)
	require.Equal(t, jobs.Ready, got.State)
	require.Zero(t, got.Attempt)
	require.Empty(t, got.Error)
	require.Empty(t, got.ErrorClass)
	require.True(t, got.Finished.IsZero())
	require.Equal(t, 1, b.claim(t, "w").Lease.Attempt, "a reset job has all its tries again")

	v := string(jobs.KindValidation)
	require.Equal(t, 2.0, Counter(t, b.reg, "devshard_jobs_retried_total", map[string]string{"kind": v}))
	require.Equal(t, 1.0, Counter(t, b.reg, "devshard_jobs_failed_total", map[string]string{"kind": v}))
}

// Fail is final: the job is not retried, and keeps the class and message.
func testWorkerFailureIsFinal(t *testing.T, b *bundle) {
	j := b.enqueue(t, jobs.KindInference, "p")
	c := b.claim(t, "w")
	b.clock.Advance(time.Second)
	require.NoError(t, b.q.Fail(b.ctx, c.Lease, "construction", "the artifact would not load"))
	got := b.get(t, j.ID)
	require.Equal(t, jobs.Failed, got.State)
	require.Equal(t, "construction", got.ErrorClass)
	require.Equal(t, "the artifact would not load", got.Error)
	require.Equal(t, "w", got.Worker)
	require.True(t, got.Finished.Equal(b.clock.Now()))
	b.expire()
	r := b.rescue(t)
	require.Empty(t, r.Retried)
	require.Empty(t, r.Failed)
}

// Reset refuses the whole call for an unknown id or a job that has not
// failed, and changes nothing.
func testResetIsAtomic(t *testing.T, b *bundle) {
	failed := b.enqueue(t, jobs.KindInference, "f")
	c := b.claim(t, "w")
	require.NoError(t, b.q.Fail(b.ctx, c.Lease, "execution", "boom"))
	ready := b.enqueue(t, jobs.KindInference, "r")
	unknown := jobs.JobID(jobs.KindInference, []byte("never"))

	err := b.q.Reset(b.ctx, failed.ID, unknown)
	require.ErrorIs(t, err, jobs.ErrNotFound)
	var nf *jobs.NotFoundError
	require.ErrorAs(t, err, &nf)
	require.Equal(t, []string{unknown}, nf.IDs)

	err = b.q.Reset(b.ctx, failed.ID, ready.ID)
	require.ErrorIs(t, err, jobs.ErrWrongState)
	var se *jobs.StateError
	require.ErrorAs(t, err, &se)
	require.Equal(t, ready.ID, se.ID)
	require.Equal(t, jobs.Ready, se.State)
	require.Contains(t, err.Error(), "it is ready; reset applies only to failed jobs")

	require.Equal(t, jobs.Failed, b.get(t, failed.ID).State, "a refused reset changes nothing")
	require.NoError(t, b.q.Reset(b.ctx, failed.ID, failed.ID))
	require.Equal(t, jobs.Ready, b.get(t, failed.ID).State)
}

func testRemoveIsAtomic(t *testing.T, b *bundle) {
	a := b.enqueue(t, jobs.KindInference, "a")
	z := b.enqueue(t, jobs.KindInference, "z")
	unknown := jobs.JobID(jobs.KindInference, []byte("never"))
	err := b.q.Remove(b.ctx, a.ID, unknown, z.ID)
	var nf *jobs.NotFoundError
	require.ErrorAs(t, err, &nf)
	require.Equal(t, []string{unknown}, nf.IDs)
	b.get(t, a.ID)
	b.get(t, z.ID)

	require.NoError(t, b.q.Remove(b.ctx, a.ID, z.ID))
	_, err = b.q.Get(b.ctx, a.ID)
	require.ErrorIs(t, err, jobs.ErrNotFound)
	require.ErrorIs(t, b.q.Remove(b.ctx, a.ID), jobs.ErrNotFound)
}

// A job removed while it runs is gone for its worker too: the result is
// refused as stale, and a new job for the input runs afresh.
func testRemoveRunningJob(t *testing.T, b *bundle) {
	j := b.enqueue(t, jobs.KindInference, "p")
	c := b.claim(t, "w")
	require.NoError(t, b.q.Remove(b.ctx, j.ID))
	err := b.q.Finish(b.ctx, c.Lease, []byte("r"))
	stale := requireStale(t, err, c.Lease)
	require.False(t, stale.Exists)
	require.Contains(t, err.Error(), "no longer exists")

	b.enqueue(t, jobs.KindInference, "p")
	requireStale(t, b.q.Finish(b.ctx, c.Lease, []byte("r")), c.Lease)
	require.Equal(t, jobs.Ready, b.get(t, j.ID).State)
}

func testRemoveAll(t *testing.T, b *bundle) {
	for i := range 5 {
		b.enqueue(t, jobs.KindInference, fmt.Sprint(i))
	}
	b.claim(t, "w")
	n, err := b.q.RemoveAll(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	all, err := b.q.List(b.ctx, jobs.Filter{All: true})
	require.NoError(t, err)
	require.Empty(t, all)
	n, err = b.q.RemoveAll(b.ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

// Lifetime runs from a job's finish, not its creation: a job that waited
// in the queue keeps its result for the full Lifetime.
func testLifetimeCountsFromFinish(t *testing.T, b *bundle) {
	life := b.q.Options().Lifetime
	done := b.enqueue(t, jobs.KindInference, "done")
	b.clock.Advance(time.Second)
	failed := b.enqueue(t, jobs.KindInference, "failed")
	waiting := b.enqueue(t, jobs.KindValidation, "waiting")

	b.clock.Advance(life - time.Hour)
	c := b.claim(t, "w", jobs.KindInference)
	require.Equal(t, done.ID, c.Job.ID)
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("r")))
	c = b.claim(t, "w", jobs.KindInference)
	require.NoError(t, b.q.Fail(b.ctx, c.Lease, "execution", "boom"))

	b.clock.Advance(2 * time.Hour) // past Lifetime since creation
	require.Zero(t, b.rescue(t).Expired)
	require.Equal(t, jobs.Succeeded, b.get(t, done.ID).State)

	b.clock.Advance(life - 2*time.Hour) // exactly Lifetime since finish
	require.Equal(t, 2, b.rescue(t).Expired)
	for _, id := range []string{done.ID, failed.ID} {
		_, err := b.q.Get(b.ctx, id)
		require.ErrorIs(t, err, jobs.ErrNotFound)
	}
	require.Equal(t, jobs.Ready, b.get(t, waiting.ID).State, "unfinished jobs never expire")
	require.Equal(t, 2.0, Counter(t, b.reg, "devshard_jobs_expired_total", nil))

	_, created, err := b.q.Enqueue(b.ctx, jobs.KindInference, []byte("done"))
	require.NoError(t, err)
	require.True(t, created, "an expired job is made afresh")
}

func testList(t *testing.T, b *bundle) {
	running := b.enqueue(t, jobs.KindInference, "running")
	b.clock.Advance(time.Second)
	ready := b.enqueue(t, jobs.KindInference, "ready")
	b.clock.Advance(time.Second)
	succeeded := b.enqueue(t, jobs.KindValidation, "succeeded")
	b.clock.Advance(time.Second)
	failed := b.enqueue(t, jobs.KindValidation, "failed")

	require.Equal(t, running.ID, b.claim(t, "w1", jobs.KindInference).Job.ID)
	c := b.claim(t, "w2", jobs.KindValidation)
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, []byte("ok")))
	c = b.claim(t, "w3", jobs.KindValidation)
	require.NoError(t, b.q.Fail(b.ctx, c.Lease, "execution", "boom"))

	ids := func(js []jobs.Job) []string {
		out := make([]string, len(js))
		for i, j := range js {
			out[i] = j.ID
		}
		return out
	}
	def, err := b.q.List(b.ctx, jobs.Filter{})
	require.NoError(t, err)
	require.Equal(t, []string{running.ID, ready.ID, failed.ID}, ids(def), "unfinished and failed, oldest first")
	for _, j := range def {
		require.Nil(t, j.Input, "no inputs without Detail")
		require.Empty(t, j.LeaseToken)
	}
	require.Equal(t, jobs.Running, def[0].State)
	require.Equal(t, "w1", def[0].Worker)
	require.Equal(t, "boom", def[2].Error)

	all, err := b.q.List(b.ctx, jobs.Filter{All: true, Detail: true})
	require.NoError(t, err)
	require.Equal(t, []string{running.ID, ready.ID, succeeded.ID, failed.ID}, ids(all))
	require.Equal(t, []byte("succeeded"), all[2].Input)
	require.Equal(t, []byte("ok"), all[2].Result)
	require.Empty(t, all[0].LeaseToken, "the lease token is the claimer's alone")
}

func testSizeBounds(t *testing.T, b *bundle) {
	b.reopen(t, jobs.Options{MaxBytes: 16})
	_, _, err := b.q.Enqueue(b.ctx, jobs.KindInference, make([]byte, 17))
	require.ErrorIs(t, err, jobs.ErrTooLarge)
	var tl *jobs.TooLargeError
	require.ErrorAs(t, err, &tl)
	require.Equal(t, jobs.TooLargeError{What: "input", Size: 17, Limit: 16}, *tl)
	require.EqualError(t, err, "job input of 17 bytes refused: the limit is 16 bytes")

	b.enqueue(t, jobs.KindInference, "0123456789abcdef") // exactly at the limit
	c := b.claim(t, "w")
	require.ErrorIs(t, b.q.Finish(b.ctx, c.Lease, make([]byte, 17)), jobs.ErrTooLarge)
	require.ErrorIs(t, b.q.Fail(b.ctx, c.Lease, "execution", "a message of 26 characters"), jobs.ErrTooLarge)
	require.Equal(t, jobs.Running, b.get(t, c.Lease.JobID).State, "a refused result changes nothing")
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, make([]byte, 16)))
}

func testInvalidArguments(t *testing.T, b *bundle) {
	_, _, err := b.q.Enqueue(b.ctx, "", []byte("x"))
	require.ErrorIs(t, err, jobs.ErrInvalid)
	_, err = b.q.Claim(b.ctx, "")
	require.ErrorIs(t, err, jobs.ErrInvalid)
	_, err = b.q.Claim(b.ctx, "w", "")
	require.ErrorIs(t, err, jobs.ErrInvalid)
	_, err = b.q.Claim(b.ctx, strings.Repeat("w", 129))
	require.ErrorIs(t, err, jobs.ErrInvalid)
	_, _, err = b.q.Enqueue(b.ctx, jobs.Kind(strings.Repeat("k", 129)), nil)
	require.ErrorIs(t, err, jobs.ErrInvalid)
	b.enqueue(t, jobs.KindInference, "p")
	c := b.claim(t, "w")
	require.ErrorIs(t, b.q.Fail(b.ctx, c.Lease, "", "no class"), jobs.ErrInvalid)
}

// claimWait runs ClaimWait in the background and returns its outcome.
func (b *bundle) claimWait(q *jobs.Queue, kinds []jobs.Kind, maxWait time.Duration) <-chan *jobs.Claim {
	out := make(chan *jobs.Claim, 1)
	go func() {
		c, err := q.ClaimWait(b.ctx, "waiter", kinds, maxWait)
		if err != nil {
			c = nil
		}
		out <- c
	}()
	return out
}

// wakeBound is how soon a woken claimer must have its job. A wake-up takes
// milliseconds; the bound is loose for slow, shared test machines, and
// still far below the poll interval (a minute), so only a wake-up passes.
const wakeBound = 2 * time.Second

// waitWoken asserts a waiting claimer gets a job with id within wakeBound.
func waitWoken(t *testing.T, got <-chan *jobs.Claim, id string) {
	t.Helper()
	start := time.Now()
	select {
	case c := <-got:
		require.NotNil(t, c)
		require.Equal(t, id, c.Job.ID)
		t.Logf("woken %v after the event", time.Since(start))
	case <-time.After(wakeBound):
		t.Fatalf("the waiting claimer was not woken within %v (poll interval %v)", wakeBound, time.Minute)
	}
}

// A waiting claimer gets a job moments after its enqueue, not at the next
// poll.
func testLongPollWakesOnEnqueue(t *testing.T, b *bundle) {
	got := b.claimWait(b.q, []jobs.Kind{jobs.KindInference}, time.Minute)
	time.Sleep(50 * time.Millisecond) // let it find the queue empty and wait
	b.enqueue(t, jobs.KindValidation, "not for this worker")
	select {
	case c := <-got:
		t.Fatalf("a waiting inference worker got %v", c)
	case <-time.After(50 * time.Millisecond):
	}
	j := b.enqueue(t, jobs.KindInference, "p")
	waitWoken(t, got, j.ID)
}

func testLongPollWakesOnRescueAndReset(t *testing.T, b *bundle) {
	j := b.enqueue(t, jobs.KindInference, "p")
	b.claim(t, "w")
	got := b.claimWait(b.q, nil, time.Minute)
	time.Sleep(50 * time.Millisecond)
	b.expire()
	b.rescue(t)
	waitWoken(t, got, j.ID)

	// The waiter holds the job now; its lease expires and, with one try
	// allowed, the job fails.
	b.reopen(t, jobs.Options{MaxTry: 1})
	b.expire()
	require.Len(t, b.rescue(t).Failed, 1)
	got = b.claimWait(b.q, nil, time.Minute)
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, b.q.Reset(b.ctx, j.ID))
	waitWoken(t, got, j.ID)
}

func testLongPollTimesOut(t *testing.T, b *bundle) {
	start := time.Now()
	c, err := b.q.ClaimWait(b.ctx, "w", nil, 30*time.Millisecond)
	require.NoError(t, err)
	require.Nil(t, c)
	require.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)

	ctx, cancel := context.WithCancel(b.ctx)
	cancel()
	_, err = b.q.ClaimWait(ctx, "w", nil, time.Minute)
	require.ErrorIs(t, err, context.Canceled)
}

func testMetrics(t *testing.T, b *bundle) {
	b.enqueue(t, jobs.KindInference, "a")
	b.enqueue(t, jobs.KindInference, "b")
	b.enqueue(t, jobs.KindValidation, "c")
	_, _, err := b.q.Enqueue(b.ctx, jobs.KindInference, []byte("a"))
	require.NoError(t, err)
	c := b.claim(t, "w")
	require.NoError(t, b.q.Finish(b.ctx, c.Lease, nil))
	require.Equal(t, []byte{}, b.get(t, c.Lease.JobID).Result, "an empty result is a result")
	b.claim(t, "w")

	inf := map[string]string{"kind": string(jobs.KindInference)}
	require.Equal(t, 2.0, Counter(t, b.reg, "devshard_jobs_enqueued_total", inf), "a deduplicated enqueue is not counted")
	require.Equal(t, 1.0, Counter(t, b.reg, "devshard_jobs_enqueued_total", map[string]string{"kind": string(jobs.KindValidation)}))
	require.Equal(t, 2.0, Counter(t, b.reg, "devshard_jobs_claimed_total", inf))
	require.Equal(t, 1.0, Counter(t, b.reg, "devshard_jobs_succeeded_total", inf))
	for state, want := range map[jobs.State]float64{jobs.Ready: 1, jobs.Running: 1, jobs.Succeeded: 1, jobs.Failed: 0} {
		require.Equal(t, want, Counter(t, b.reg, "devshard_jobs_depth", map[string]string{"state": string(state)}), "depth %s", state)
	}
}

// Queues sharing one database see one queue: a job enqueued through one
// is claimed through the other, and never by both.
func testSharedDatabase(t *testing.T, b *bundle) {
	other := b.target.Open(t, b.options())
	const n = 60
	for i := range n {
		b.enqueue(t, jobs.KindInference, fmt.Sprint(i))
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for w := range 6 {
		q := b.q
		if w%2 == 1 {
			q = other
		}
		wg.Go(func() {
			for {
				c, err := q.Claim(b.ctx, fmt.Sprint("w", w))
				if err != nil || c == nil {
					return
				}
				mu.Lock()
				seen[c.Job.ID]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Len(t, seen, n)
	for id, times := range seen {
		require.Equal(t, 1, times, "job %s", id)
	}
}

// Rescuers of several queues running at once take back each expired lease
// exactly once: no double retry, no attempt counted twice (asynq #717).
func testConcurrentRescuersRetryOnce(t *testing.T, b *bundle) {
	queues := []*jobs.Queue{b.q, b.target.Open(t, b.options()), b.target.Open(t, b.options())}
	const n = 30
	for i := range n {
		b.enqueue(t, jobs.KindInference, fmt.Sprint(i))
		b.claim(t, "w")
	}
	b.expire()
	var mu sync.Mutex
	retried := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, 3*len(queues))
	for _, q := range queues {
		for range 3 {
			wg.Go(func() {
				r, err := q.Rescue(b.ctx)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, j := range r.Retried {
					retried[j.ID]++
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// A pass skipped because another held the rescuer lock retried
	// nothing; one more pass picks up anything left.
	for _, j := range b.rescue(t).Retried {
		retried[j.ID]++
	}
	require.Len(t, retried, n)
	for id, times := range retried {
		require.Equal(t, 1, times, "job %s retried once", id)
		require.Equal(t, 1, b.get(t, id).Attempt)
	}
}

// Run makes a pass every RescueInterval: an expired lease is taken back
// without anyone calling Rescue.
func testRunRescuesPeriodically(t *testing.T, b *bundle) {
	b.reopen(t, jobs.Options{RescueInterval: 10 * time.Millisecond})
	j := b.enqueue(t, jobs.KindInference, "p")
	b.claim(t, "w")
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- b.q.Run(ctx) }()
	b.expire()
	require.Eventually(t, func() bool {
		got, err := b.q.Get(b.ctx, j.ID)
		return err == nil && got.State == jobs.Ready
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

func testClosed(t *testing.T, b *bundle) {
	b.enqueue(t, jobs.KindInference, "p")
	c := b.claim(t, "w")
	got := make(chan error, 1)
	go func() {
		_, err := b.q.ClaimWait(b.ctx, "w", nil, time.Minute)
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, b.q.Close())
	require.NoError(t, b.q.Close(), "closing twice is harmless")
	select {
	case err := <-got:
		require.ErrorIs(t, err, jobs.ErrClosed)
	case <-time.After(wakeBound):
		t.Fatal("a waiting claimer was not released by Close")
	}
	_, _, err := b.q.Enqueue(b.ctx, jobs.KindInference, []byte("q"))
	require.ErrorIs(t, err, jobs.ErrClosed)
	require.ErrorIs(t, b.q.Finish(b.ctx, c.Lease, nil), jobs.ErrClosed)
	_, err = b.q.Rescue(b.ctx)
	require.True(t, errors.Is(err, jobs.ErrClosed))
}

// ClaimN takes several jobs in claim order, each under its own lease, and
// pools claiming at once never share a job.
func testClaimN(t *testing.T, b *bundle) {
	v := b.enqueue(t, jobs.KindValidation, "v")
	b.clock.Advance(time.Second)
	i1 := b.enqueue(t, jobs.KindInference, "i1")
	b.clock.Advance(time.Second)
	i2 := b.enqueue(t, jobs.KindInference, "i2")
	cs, err := b.q.ClaimN(b.ctx, "pool", 2)
	require.NoError(t, err)
	require.Len(t, cs, 2)
	require.Equal(t, []string{i1.ID, i2.ID}, []string{cs[0].Job.ID, cs[1].Job.ID}, "claim order")
	require.NotEqual(t, cs[0].Lease.Token, cs[1].Lease.Token, "a lease each")
	for _, c := range cs {
		require.Equal(t, 1, c.Lease.Attempt)
		require.Equal(t, jobs.Running, c.Job.State)
		require.Empty(t, c.Job.LeaseToken, "the token is in the lease only")
	}
	// Each lease fences its own job: one's token does not finish the other.
	crossed := jobs.Lease{JobID: cs[1].Lease.JobID, Attempt: 1, Token: cs[0].Lease.Token}
	require.ErrorIs(t, b.q.Finish(b.ctx, crossed, []byte("x")), jobs.ErrStaleLease)
	require.NoError(t, b.q.Finish(b.ctx, cs[0].Lease, []byte("r")))

	rest, err := b.q.ClaimN(b.ctx, "pool", 8)
	require.NoError(t, err)
	require.Len(t, rest, 1, "only what is ready")
	require.Equal(t, v.ID, rest[0].Job.ID)
	none, err := b.q.ClaimN(b.ctx, "pool", 8)
	require.NoError(t, err)
	require.Empty(t, none)
	_, err = b.q.ClaimN(b.ctx, "pool", 0)
	require.ErrorIs(t, err, jobs.ErrInvalid)

	// Pools claiming at once never share a job.
	const n = 90
	for i := range n {
		b.enqueue(t, jobs.KindValidation, fmt.Sprint("pooled ", i))
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for p := range 4 {
		wg.Go(func() {
			for {
				cs, err := b.q.ClaimN(b.ctx, fmt.Sprint("pool", p), 7)
				if err != nil {
					errs <- err
					return
				}
				if len(cs) == 0 {
					return
				}
				mu.Lock()
				for _, c := range cs {
					if seen[c.Job.ID] {
						errs <- fmt.Errorf("job %s claimed twice", c.Job.ID)
					}
					seen[c.Job.ID] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, seen, n)
}
