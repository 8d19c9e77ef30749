package jobs

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// Driver is the storage seam under a Queue. A driver stores jobs and makes
// each method atomic; the Queue decides ids, times, tokens and errors, so
// drivers carry no policy of their own.
//
// Contract shared by every method:
//   - Atomicity. Each method is one transaction: all or nothing.
//   - Ownership. A driver keeps no slice passed to it; slices it returns
//     are fresh and belong to the caller.
//   - Concurrency. Every method is safe for concurrent use, also by several
//     queues (processes, hosts) sharing one database.
//   - Errors. A driver returns the typed errors of this package where its
//     doc says so, and otherwise wraps the database's error in a sentence.
type Driver interface {
	// Insert stores j, a ready job, unless a job with j.ID exists. It
	// returns the stored job (the existing one if there was one) and
	// whether j was inserted.
	Insert(ctx context.Context, j Job) (stored Job, inserted bool, err error)
	// Claim moves up to len(c.Holders) ready jobs whose kind is in
	// c.Kinds (any kind if empty), taken in claim order (Priority of their
	// kind, then Created, then ID), to running, counting one attempt each:
	// the i-th job goes to c.Holders[i], under its worker and token. It
	// returns the jobs claimed, claimed[i] held by c.Holders[i]: fewer than
	// the holders (none) when fewer jobs are ready. Every job it takes is
	// handed to a holder, so none is left running with no one to run it.
	// Two concurrent claims never return the same job.
	Claim(ctx context.Context, c ClaimParams) (claimed []Job, err error)
	// Heartbeat sets the heartbeat time and lease expiry of the job held by
	// lease: running, at lease.Attempt, with lease.Token. When the lease
	// does not match it changes nothing and returns the job as it is now,
	// lease token included (nil if there is no such job), for the Queue to
	// explain.
	Heartbeat(ctx context.Context, lease Lease, now, expires time.Time) (applied bool, current *Job, err error)
	// Finish applies fs together, all or nothing, and returns one answer
	// per finish, in order. Each moves the job held by its lease (as for
	// Heartbeat) to its outcome's State, stores the outcome, and answers
	// with the job as it is then. A mismatched lease changes nothing, as
	// for Heartbeat. Two finishes with one lease apply as if one ran after
	// the other: at most one applies. The lease token stays stored, so a
	// replayed call can be recognised.
	Finish(ctx context.Context, fs []FinishParams) ([]Fenced, error)
	// Rescue runs one maintenance pass (see RescueParams). A driver shared
	// by several queues lets one pass run at a time and reports the others
	// as Skipped.
	Rescue(ctx context.Context, r RescueParams) (RescueReport, error)
	// Get returns the job, or a *NotFoundError.
	Get(ctx context.Context, id string) (Job, error)
	// List returns the jobs in f's states, oldest first.
	List(ctx context.Context, f Filter) ([]Job, error)
	// Reset moves every job of ids back to ready with no attempts, no
	// worker, no lease and no outcome; each keeps its Created time, and so
	// its place in the claim order. It checks first, with CheckReset, and
	// changes nothing if any id is refused.
	Reset(ctx context.Context, ids []string) error
	// Remove deletes every job of ids, in any state, or none: an unknown id
	// is a *NotFoundError (see CheckFound).
	Remove(ctx context.Context, ids []string) error
	// RemoveAll deletes every job and returns how many there were.
	RemoveAll(ctx context.Context) (int, error)
	// Count returns the number of jobs in each state.
	Count(ctx context.Context) (map[State]int, error)
	// Close releases the driver's connections.
	Close() error
}

// Listener is a driver that hears jobs made ready by other processes
// sharing its database (Postgres LISTEN/NOTIFY). Listen calls wake for each
// such event until ctx is done, reconnecting as needed.
type Listener interface {
	Listen(ctx context.Context, wake func())
}

// Writers is a driver that gains from writing several batches at once:
// Postgres, one per pooled connection, whose commits the server flushes
// together. To other drivers the queue writes one batch at a time, as
// SQLite's one writer takes them.
type Writers interface {
	// Writers is how many batches to write at once.
	Writers() int
}

// ClaimParams is one batch of claims: the kinds they accept, the new
// leases' start and expiry, and who holds each job claimed.
type ClaimParams struct {
	Kinds   []Kind // empty: any kind
	Holders []Holder
	Now     time.Time
	Expires time.Time
}

// Describe names the claim for messages: "a job for worker w1", or "jobs
// for 3 workers".
func (p ClaimParams) Describe() string {
	if len(p.Holders) == 1 {
		return "a job for worker " + p.Holders[0].Worker
	}
	return fmt.Sprintf("jobs for %d workers", len(p.Holders))
}

// Holder is the worker a claimed job goes to, with the lease token issued
// for it.
type Holder struct {
	Worker string
	Token  string
}

// FinishParams is one finish: the lease presented and the outcome.
type FinishParams struct {
	Lease   Lease
	Outcome Outcome
}

// Fenced is the answer to one write fenced by a lease: whether it applied,
// and the job as it is then (nil if there is no such job), lease token
// included, for the Queue to explain a refusal.
type Fenced struct {
	Applied bool
	Current *Job
}

// Outcome is how a running job finished.
type Outcome struct {
	State      State // Succeeded or Failed
	Result     []byte
	ErrorClass string
	Error      string
	Now        time.Time
}

// RescueParams is one maintenance pass (Retry decides each expired job):
//   - a running job whose lease expired at or before Now goes back to ready
//     if its Attempt is below MaxTry, keeping its attempt count;
//   - otherwise it fails with ErrorClassLeaseExpired and the message
//     LeaseExpiredMessage(Attempt), finished at Now;
//   - a succeeded or failed job finished at or before FinishedBefore is
//     removed.
type RescueParams struct {
	Now            time.Time
	MaxTry         int
	FinishedBefore time.Time
}

// Retry reports whether a running job at attempt whose lease expired goes
// back to ready; otherwise it fails.
func (r RescueParams) Retry(attempt int) bool { return attempt < r.MaxTry }

// RescueReport is what a maintenance pass did.
type RescueReport struct {
	// Skipped: another queue's pass held the rescuer lock, so this one did
	// nothing.
	Skipped bool
	Retried []JobRef // back to ready
	Failed  []JobRef // out of tries
	Expired int      // finished jobs removed after Lifetime
}

// JobRef names a job and its kind.
type JobRef struct {
	ID   string
	Kind Kind
}

// Filter selects the jobs List returns.
type Filter struct {
	// All lists every job. Without it List returns the jobs an operator
	// acts on: ready, running and failed (not succeeded).
	All bool
	// Detail includes inputs and results; without it they are nil.
	Detail bool
}

// States returns the states f selects.
func (f Filter) States() []State {
	if f.All {
		return States
	}
	return []State{Ready, Running, Failed}
}

// LeaseExpiredMessage is the error of a job failed by the rescuer.
func LeaseExpiredMessage(tries int) string {
	if tries == 1 {
		return "lease expired after 1 try"
	}
	return "lease expired after " + strconv.Itoa(tries) + " tries"
}

// CheckFound reports the ids missing from found as a *NotFoundError, in
// the order given. Drivers call it inside their transaction.
func CheckFound(ids []string, found map[string]State) error {
	var missing []string
	for _, id := range ids {
		if _, ok := found[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return &NotFoundError{IDs: missing}
	}
	return nil
}

// CheckReset reports whether every job of ids exists (found holds their
// states) and has failed: only a failed job can be reset. Drivers call it
// inside their transaction.
func CheckReset(ids []string, found map[string]State) error {
	if err := CheckFound(ids, found); err != nil {
		return err
	}
	for _, id := range ids {
		if s := found[id]; s != Failed {
			return &StateError{Op: "reset", ID: id, State: s, Want: []State{Failed}}
		}
	}
	return nil
}
