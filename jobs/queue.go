package jobs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Queue. Zero fields take the defaults.
type Options struct {
	// HeartbeatTimeout is how long a lease lasts from its claim or last
	// heartbeat (default 15s). Workers heartbeat well within it.
	HeartbeatTimeout time.Duration
	// MaxTry is how many claims a job gets before an expired lease fails it
	// (default 2).
	MaxTry int
	// Lifetime is how long a succeeded or failed job is kept after it
	// finished (default 25h).
	Lifetime time.Duration
	// MaxBytes bounds an input, a result and an error message (default
	// 1 MiB).
	MaxBytes int
	// PollInterval is how often ClaimWait looks again without being woken
	// (default 1s): the safety net under the wake-ups.
	PollInterval time.Duration
	// RescueInterval is how often Run makes a maintenance pass (default
	// HeartbeatTimeout/3).
	RescueInterval time.Duration
	// Now is the clock (default time.Now). Tests inject their own.
	Now func() time.Time
	// Registerer receives the queue's metrics; nil registers them nowhere
	// (they are still counted).
	Registerer prometheus.Registerer
	// OnError hears the errors of Run's passes, which Run otherwise only
	// counts, since it keeps going through a database outage.
	OnError func(error)
	// Volatile says which kinds are kept in the queue's memory instead of
	// the driver (nil: none). A volatile job follows every rule of a
	// durable one (dedup, priority, leases, retries, lifetime, listing)
	// but costs no commit and dies with the process: for jobs whose only
	// reader lives in this process, such as a host's inferences, whose
	// user's stream does. Queues sharing a database do not see each
	// other's volatile jobs. A claim of volatile kinds only does not ask
	// the driver, so a job of such a kind that the driver still holds
	// (written before the kind was volatile) is never claimed: remove it.
	Volatile func(Kind) bool
}

func (o Options) withDefaults() Options {
	if o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = 15 * time.Second
	}
	if o.MaxTry <= 0 {
		o.MaxTry = 2
	}
	if o.Lifetime <= 0 {
		o.Lifetime = 25 * time.Hour
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 20
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.RescueInterval <= 0 {
		o.RescueInterval = o.HeartbeatTimeout / 3
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.OnError == nil {
		o.OnError = func(error) {}
	}
	if o.Volatile == nil {
		o.Volatile = func(Kind) bool { return false }
	}
	return o
}

// Queue is the job queue over a Driver, with the jobs of volatile kinds
// kept beside it in memory. It is safe for concurrent use.
type Queue struct {
	d       Driver
	mem     *memory // the volatile jobs
	opts    Options
	metrics *metrics
	wake    wakeups

	// Concurrent claims and finishes are written in batches, one
	// statement and one commit a batch (see batcher).
	claims   *batcher[claimCall, claimed]
	finishes *batcher[FinishParams, Fenced]

	stop     context.CancelFunc
	done     chan struct{} // closed by Close
	listened sync.WaitGroup
	close    sync.Once
}

// New returns a queue over d. If d is a Listener, the queue listens for
// jobs made ready by other processes until Close. The queue owns d: Close
// closes it.
func New(d Driver, opts Options) (*Queue, error) {
	opts = opts.withDefaults()
	q := &Queue{d: d, mem: newMemory(), opts: opts, done: make(chan struct{})}
	writers := 1
	if w, ok := d.(Writers); ok {
		writers = max(w.Writers(), 1)
	}
	q.claims = newBatcher(writers, q.writeClaims)
	// Finishes go through two writers at most: finishes that arrive
	// together share a commit, and the pool's other connections stay free
	// for claims, which a worker waits on before it can work. (All of a
	// pool's connections writing finishes gave a third fewer jobs/s.)
	q.finishes = newBatcher(min(writers, maxFinishWriters), q.d.Finish)
	q.metrics = newMetrics(q)
	if opts.Registerer != nil {
		if err := q.metrics.register(opts.Registerer); err != nil {
			return nil, err
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	q.stop = stop
	if l, ok := d.(Listener); ok {
		// Another process's enqueue names no kind here: all look.
		q.listened.Go(func() { l.Listen(ctx, q.wake.all) })
	}
	return q, nil
}

// Options returns the queue's options with their defaults filled in.
func (q *Queue) Options() Options { return q.opts }

// Close stops listening and closes the driver. Waiting claims return
// ErrClosed.
func (q *Queue) Close() error {
	var err error
	q.close.Do(func() {
		close(q.done)
		q.stop()
		q.listened.Wait()
		err = q.d.Close()
	})
	return err
}

func (q *Queue) closed() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

// now reads the clock to the microsecond, the precision stored.
func (q *Queue) now() time.Time {
	return q.opts.Now().UTC().Truncate(time.Microsecond)
}

// maxName bounds kinds and worker ids: labels, not payloads.
const maxName = 128

func checkName(what, name string) error {
	switch {
	case name == "":
		return invalidf("the %s is empty", what)
	case len(name) > maxName:
		return invalidf("the %s %q… is %d bytes; at most %d are allowed", what, name[:16], len(name), maxName)
	}
	return nil
}

func (q *Queue) checkSize(what string, n int) error {
	if n > q.opts.MaxBytes {
		return &TooLargeError{What: what, Size: n, Limit: q.opts.MaxBytes}
	}
	return nil
}

// Enqueue adds a job of kind with canonical input and returns it, or
// returns the job that already exists for them (see the package doc on
// deduplication); created says which.
func (q *Queue) Enqueue(ctx context.Context, kind Kind, input []byte) (job Job, created bool, err error) {
	if q.closed() {
		return Job{}, false, ErrClosed
	}
	if err := checkName("kind", string(kind)); err != nil {
		return Job{}, false, err
	}
	if err := q.checkSize("input", len(input)); err != nil {
		return Job{}, false, err
	}
	j := Job{ID: JobID(kind, input), Kind: kind, Input: bytes.Clone(input), State: Ready, Created: q.now()}
	if j.Input == nil {
		j.Input = []byte{}
	}
	side := q.d
	if q.opts.Volatile(kind) {
		side = q.mem
	}
	stored, created, err := side.Insert(ctx, j)
	if err != nil {
		return Job{}, false, err
	}
	stored.LeaseToken = ""
	if created {
		q.metrics.enqueued.WithLabelValues(string(kind)).Inc()
		q.wake.one(kind, j.ID)
	}
	return stored, created, nil
}

// Claim hands the first ready job of kinds (any kind if none given) to
// worker under a new lease, or returns nil when no job is ready. Inference
// jobs go before validation jobs, then the oldest first. Volatile jobs go
// before durable jobs; volatile kinds are meant to be the first in
// priority (inference), so the order holds across both.
func (q *Queue) Claim(ctx context.Context, worker string, kinds ...Kind) (*Claim, error) {
	if q.closed() {
		return nil, ErrClosed
	}
	if err := checkName("worker id", worker); err != nil {
		return nil, err
	}
	for _, k := range kinds {
		if err := checkName("kind", string(k)); err != nil {
			return nil, err
		}
	}
	call := claimCall{holder: Holder{Worker: worker, Token: newToken()}, kinds: kinds}
	// A volatile job needs no commit, so it is claimed at once rather
	// than behind the batch being written.
	if c := q.claimVolatile(call); c != nil {
		q.metrics.claimed.WithLabelValues(string(c.Job.Kind)).Inc()
		return c, nil
	}
	if q.onlyVolatile(kinds) {
		// The driver holds no job of these kinds: asking it would cost a
		// statement (an idle inference worker's every look) for nothing.
		return nil, nil
	}
	got, err := q.claims.do(ctx, call)
	if err == nil {
		err = got.err
	}
	if err != nil || got.claim == nil {
		return nil, err
	}
	q.metrics.claimed.WithLabelValues(string(got.claim.Job.Kind)).Inc()
	return got.claim, nil
}

// maxFinishWriters bounds the finish batches written at once.
const maxFinishWriters = 2

// ClaimN hands up to n ready jobs of kinds to worker, each under a lease
// of its own, in one statement and one durable commit: a worker pool that
// fetches for all its free slots at once, as River's producer does, pays
// one commit for them all. It returns none when no job is ready. The
// claim order and the fence are Claim's.
func (q *Queue) ClaimN(ctx context.Context, worker string, n int, kinds ...Kind) ([]*Claim, error) {
	if q.closed() {
		return nil, ErrClosed
	}
	if n < 1 || n > maxBatch {
		return nil, invalidf("a claim takes 1 to %d jobs at once, not %d", maxBatch, n)
	}
	if err := checkName("worker id", worker); err != nil {
		return nil, err
	}
	for _, k := range kinds {
		if err := checkName("kind", string(k)); err != nil {
			return nil, err
		}
	}
	now := q.now()
	p := ClaimParams{Kinds: kinds, Now: now, Expires: now.Add(q.opts.HeartbeatTimeout), Holders: make([]Holder, n)}
	for i := range p.Holders {
		p.Holders[i] = Holder{Worker: worker, Token: newToken()}
	}
	// Volatile jobs first, as Claim takes them; the driver fills the rest
	// in its one statement.
	js, _ := q.mem.Claim(ctx, p) // memory never fails
	if len(js) < n && !q.onlyVolatile(kinds) {
		rest := p
		rest.Holders = p.Holders[len(js):]
		durable, err := q.d.Claim(ctx, rest)
		if err != nil && len(js) == 0 {
			return nil, err
		}
		if err != nil {
			// The volatile claims stand; the durable ones did not happen.
			durable = nil
		}
		js = append(js, durable...)
	}
	out := make([]*Claim, len(js))
	for i, j := range js {
		lease := Lease{JobID: j.ID, Attempt: j.Attempt, Token: p.Holders[i].Token}
		j.LeaseToken = ""
		out[i] = &Claim{Lease: lease, Expires: p.Expires, Job: j}
		q.metrics.claimed.WithLabelValues(string(j.Kind)).Inc()
	}
	return out, nil
}

// claimCall is one Claim waiting for its batch.
type claimCall struct {
	holder Holder
	kinds  []Kind
}

// claimed answers one claimCall: a claim, nil when no job was ready, or
// the error of its group's statement.
type claimed struct {
	claim *Claim
	err   error
}

// onlyVolatile reports whether every kind of kinds is volatile, so no
// job of theirs is in the driver. No kinds means any kind.
func (q *Queue) onlyVolatile(kinds []Kind) bool {
	return len(kinds) > 0 && !slices.ContainsFunc(kinds, func(k Kind) bool { return !q.opts.Volatile(k) })
}

// claimVolatile claims a volatile job for call, or returns nil when none
// is ready.
func (q *Queue) claimVolatile(call claimCall) *Claim {
	now := q.now()
	p := ClaimParams{Kinds: call.kinds, Now: now, Expires: now.Add(q.opts.HeartbeatTimeout), Holders: []Holder{call.holder}}
	js, _ := q.mem.Claim(context.Background(), p) // memory never fails
	if len(js) == 0 {
		return nil
	}
	return newClaim(js[0], call.holder, p.Expires)
}

// newClaim is job j claimed by h until expires, its token kept to the
// claim alone.
func newClaim(j Job, h Holder, expires time.Time) *Claim {
	j.LeaseToken = ""
	return &Claim{Lease: Lease{JobID: j.ID, Attempt: j.Attempt, Token: h.Token}, Expires: expires, Job: j}
}

// writeClaims claims for a batch of calls. Calls that accept the same
// kinds share one statement; the first call in the batch gets the first
// job, volatile jobs first. Each statement commits on its own, so its
// error is its calls' alone: the other groups' claims stand.
func (q *Queue) writeClaims(ctx context.Context, calls []claimCall) ([]claimed, error) {
	now := q.now()
	expires := now.Add(q.opts.HeartbeatTimeout)
	out := make([]claimed, len(calls))
	var groups [][]int // indexes into calls, by kinds
	for i, c := range calls {
		g := slices.IndexFunc(groups, func(g []int) bool { return slices.Equal(calls[g[0]].kinds, c.kinds) })
		if g < 0 {
			groups = append(groups, []int{i})
		} else {
			groups[g] = append(groups[g], i)
		}
	}
	for _, g := range groups {
		p := ClaimParams{Kinds: calls[g[0]].kinds, Now: now, Expires: expires, Holders: make([]Holder, len(g))}
		for k, i := range g {
			p.Holders[k] = calls[i].holder
		}
		js, _ := q.mem.Claim(ctx, p) // memory never fails
		var err error
		if len(js) < len(p.Holders) {
			rest := p
			rest.Holders = p.Holders[len(js):]
			var durable []Job
			durable, err = q.d.Claim(ctx, rest)
			js = append(js, durable...)
		}
		for k, i := range g {
			switch {
			case k < len(js):
				out[i].claim = newClaim(js[k], p.Holders[k], expires)
			case err != nil:
				out[i].err = err
			}
		}
	}
	return out, nil
}

// ClaimWait is Claim that waits up to maxWait for a job to become ready. It
// is woken within milliseconds by an enqueue, reset or rescue on this
// queue (and, with a Listener driver, on any queue sharing the database),
// and looks again every PollInterval regardless. It returns nil when
// maxWait passes without a job, and ctx's error if ctx ends first. An
// enqueue wakes one waiting claimer, which passes the wake on when it
// cannot use it (see wakeups).
func (q *Queue) ClaimWait(ctx context.Context, worker string, kinds []Kind, maxWait time.Duration) (*Claim, error) {
	deadline := time.NewTimer(maxWait)
	defer deadline.Stop()
	poll := time.NewTicker(q.opts.PollInterval)
	defer poll.Stop()
	var held *wakeCall // the wake this claim answers, if any
	for {
		// Registered before the claim, so a job enqueued between the claim
		// and the wait still wakes us.
		w := q.wake.add(kinds)
		c, err := q.Claim(ctx, worker, kinds...)
		if err != nil || c != nil {
			// A wake for another job than the one claimed, or met with an
			// error, is the next waiter's.
			if late, ok := q.wake.remove(w); ok {
				q.passWake(late, c)
			}
			if held != nil {
				q.passWake(*held, c)
			}
			return c, err
		}
		if held != nil {
			q.passWake(*held, nil)
			held = nil
		}
		var stop error
		select {
		case got := <-w.ch: // the waker took w off the list
			held = &got
			continue
		case <-poll.C:
			if got, ok := q.wake.remove(w); ok {
				held = &got
			}
			continue
		case <-deadline.C:
		case <-ctx.Done():
			stop = ctx.Err()
		case <-q.done:
			stop = ErrClosed
		}
		if got, ok := q.wake.remove(w); ok {
			q.passWake(got, nil)
		}
		return nil, stop
	}
}

// passWake hands a wake on unless the claim c answered it (took its job),
// or its volatile job is known to be taken by another claim already.
func (q *Queue) passWake(w wakeCall, c *Claim) {
	if c != nil && c.Job.ID == w.job {
		return
	}
	if w.job != "" && q.mem.taken(w.job) {
		return
	}
	q.wake.pass(w)
}

// Heartbeat extends the lease to HeartbeatTimeout from now and returns its
// new expiry. A lease that is not the job's current one is refused with a
// *StaleLeaseError and extends nothing.
func (q *Queue) Heartbeat(ctx context.Context, lease Lease) (time.Time, error) {
	if q.closed() {
		return time.Time{}, ErrClosed
	}
	now := q.now()
	expires := now.Add(q.opts.HeartbeatTimeout)
	side := q.d
	if q.mem.has(lease.JobID) {
		side = q.mem
	}
	applied, cur, err := side.Heartbeat(ctx, lease, now, expires)
	if err != nil {
		return time.Time{}, err
	}
	if !applied {
		return time.Time{}, q.stale("heartbeat", lease, cur)
	}
	return expires, nil
}

// Finish stores the job's result and marks it succeeded. A lease that is
// not the job's current one is refused with a *StaleLeaseError and stores
// nothing; repeating the same Finish with the same lease succeeds again.
func (q *Queue) Finish(ctx context.Context, lease Lease, result []byte) error {
	if err := q.checkSize("result", len(result)); err != nil {
		return err
	}
	if result == nil {
		result = []byte{}
	}
	return q.finish(ctx, "finish", lease, Outcome{State: Succeeded, Result: bytes.Clone(result)})
}

// Fail marks the job failed with an error class (a short label, such as
// "execution") and a message. A failed job is not retried; an operator's
// Reset revives it. Stale leases are refused as by Finish.
func (q *Queue) Fail(ctx context.Context, lease Lease, class, msg string) error {
	if class == "" {
		return invalidf("failing job %s needs an error class", ShortID(lease.JobID))
	}
	if err := q.checkSize("error", len(class)+len(msg)); err != nil {
		return err
	}
	return q.finish(ctx, "fail", lease, Outcome{State: Failed, ErrorClass: class, Error: msg})
}

func (q *Queue) finish(ctx context.Context, call string, lease Lease, o Outcome) error {
	if q.closed() {
		return ErrClosed
	}
	o.Now = q.now()
	f, err := q.writeFinish(ctx, FinishParams{Lease: lease, Outcome: o})
	if err != nil {
		return err
	}
	cur := f.Current
	if !f.Applied {
		if cur != nil && replays(cur, lease, o) {
			return nil
		}
		return q.stale(call, lease, cur)
	}
	kind := "unknown"
	if cur != nil {
		kind = string(cur.Kind)
	}
	if o.State == Succeeded {
		q.metrics.succeeded.WithLabelValues(kind).Inc()
	} else {
		q.metrics.failed.WithLabelValues(kind).Inc()
	}
	return nil
}

// writeFinish applies a finish on the side that holds its job: a
// volatile job at once, a durable one in the next batch written.
func (q *Queue) writeFinish(ctx context.Context, f FinishParams) (Fenced, error) {
	if !q.mem.has(f.Lease.JobID) {
		return q.finishes.do(ctx, f)
	}
	out, err := q.mem.Finish(ctx, []FinishParams{f})
	if err != nil {
		return Fenced{}, err
	}
	return out[0], nil
}

// replays reports whether the job was finished by this very lease with
// this very outcome: a worker repeating a call whose reply it lost.
func replays(cur *Job, lease Lease, o Outcome) bool {
	return cur.State == o.State && cur.Attempt == lease.Attempt && cur.LeaseToken == lease.Token &&
		bytes.Equal(cur.Result, o.Result) && cur.ErrorClass == o.ErrorClass && cur.Error == o.Error
}

// stale explains and counts a refused lease.
func (q *Queue) stale(call string, lease Lease, cur *Job) error {
	e := &StaleLeaseError{Lease: lease}
	kind := "unknown"
	if cur != nil {
		e.Exists, e.State, e.Attempt = true, cur.State, cur.Attempt
		kind = string(cur.Kind)
	}
	q.metrics.stale.WithLabelValues(kind, call).Inc()
	return e
}

// Rescue makes one maintenance pass: expired leases are taken back (the
// job retried, or failed once it had MaxTry claims) and jobs finished
// Lifetime ago are removed. Queues sharing a database run one pass at a
// time; the others report Skipped.
func (q *Queue) Rescue(ctx context.Context) (RescueReport, error) {
	if q.closed() {
		return RescueReport{}, ErrClosed
	}
	now := q.now()
	p := RescueParams{Now: now, MaxTry: q.opts.MaxTry, FinishedBefore: now.Add(-q.opts.Lifetime)}
	// The volatile pass is counted even when the durable one fails, as
	// it took effect all the same.
	r, _ := q.mem.Rescue(ctx, p) // memory never fails
	q.rescued(r)
	durable, err := q.d.Rescue(ctx, p)
	if err != nil {
		return RescueReport{}, err
	}
	q.rescued(durable)
	r.Skipped = durable.Skipped
	r.Retried = append(r.Retried, durable.Retried...)
	r.Failed = append(r.Failed, durable.Failed...)
	r.Expired += durable.Expired
	return r, nil
}

// rescued counts what a pass did, and wakes the claimers if it made jobs
// ready.
func (q *Queue) rescued(r RescueReport) {
	for _, j := range r.Retried {
		q.metrics.retried.WithLabelValues(string(j.Kind)).Inc()
	}
	for _, j := range r.Failed {
		q.metrics.failed.WithLabelValues(string(j.Kind)).Inc()
	}
	q.metrics.expired.Add(float64(r.Expired))
	if len(r.Retried) > 0 {
		q.wake.all()
	}
}

// Run makes a maintenance pass every RescueInterval until ctx ends, and
// returns ctx's error. A failed pass is counted and passed to
// Options.OnError; the next one runs all the same.
func (q *Queue) Run(ctx context.Context) error {
	t := time.NewTicker(q.opts.RescueInterval)
	defer t.Stop()
	for {
		if _, err := q.Rescue(ctx); err != nil && ctx.Err() == nil {
			q.metrics.rescueErrors.Inc()
			q.opts.OnError(err)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-q.done:
			return ErrClosed
		}
	}
}

// Get returns the job with its input and result, or a *NotFoundError.
func (q *Queue) Get(ctx context.Context, id string) (Job, error) {
	if q.closed() {
		return Job{}, ErrClosed
	}
	j, err := q.mem.Get(ctx, id)
	if err != nil {
		j, err = q.d.Get(ctx, id)
	}
	j.LeaseToken = ""
	return j, err
}

// List returns the jobs f selects, oldest first.
func (q *Queue) List(ctx context.Context, f Filter) ([]Job, error) {
	if q.closed() {
		return nil, ErrClosed
	}
	js, err := q.d.List(ctx, f)
	if err != nil {
		return nil, err
	}
	if volatile, _ := q.mem.List(ctx, f); len(volatile) > 0 {
		js = append(js, volatile...)
		sortByCreated(js)
	}
	for i := range js {
		js[i].LeaseToken = ""
	}
	return js, err
}

// Reset revives failed jobs: each goes back to ready with no attempts. It
// is all or nothing: an unknown id (*NotFoundError) or a job that has not
// failed (*StateError) refuses the whole call.
func (q *Queue) Reset(ctx context.Context, ids ...string) error {
	if q.closed() {
		return ErrClosed
	}
	ids = unique(ids)
	if len(ids) == 0 {
		return nil
	}
	durable := func(rest []string) error { return q.d.Reset(ctx, rest) }
	if err := q.mem.alongside(ids, CheckReset, durable, q.mem.reset); err != nil {
		return err
	}
	q.wake.all()
	return nil
}

// Remove deletes jobs in any state. It is all or nothing: an unknown id
// refuses the whole call with a *NotFoundError. A worker still running a
// removed job has its result refused as stale; enqueueing the same input
// again makes a fresh job.
func (q *Queue) Remove(ctx context.Context, ids ...string) error {
	if q.closed() {
		return ErrClosed
	}
	ids = unique(ids)
	if len(ids) == 0 {
		return nil
	}
	durable := func(rest []string) error { return q.d.Remove(ctx, rest) }
	return q.mem.alongside(ids, CheckFound, durable, q.mem.remove)
}

// RemoveAll deletes every job in one transaction and returns how many
// there were.
func (q *Queue) RemoveAll(ctx context.Context) (int, error) {
	if q.closed() {
		return 0, ErrClosed
	}
	n, err := q.d.RemoveAll(ctx)
	if err != nil {
		return 0, err
	}
	volatile, _ := q.mem.RemoveAll(ctx)
	return n + volatile, nil
}

// Count returns the number of jobs in each state.
func (q *Queue) Count(ctx context.Context) (map[State]int, error) {
	if q.closed() {
		return nil, ErrClosed
	}
	n, err := q.d.Count(ctx)
	if err != nil {
		return nil, err
	}
	if n == nil {
		n = map[State]int{}
	}
	volatile, _ := q.mem.Count(ctx)
	for s, k := range volatile {
		n[s] += k
	}
	return n, nil
}

// unique returns ids without repeats, in first-seen order.
func unique(ids []string) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// newToken is a lease token: 128 random bits, so no worker can guess
// another's lease.
func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
