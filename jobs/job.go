// Package jobs is a host's persistent job queue: the work its workers pull
// (inferences to run, peer inferences to validate), kept in SQLite (the
// default, jobs/sqlite) or Postgres (jobs/postgres) behind one small driver
// seam. Every driver passes the conformance suite in jobs/jobstest.
//
// # Rules
//
//   - Identity and deduplication. A job's id is the SHA-256 (hex) of its kind
//     and its input. The caller passes the input in canonical form (the same
//     request always encodes to the same bytes), because two encodings of one
//     request are two jobs. Enqueueing an input whose job exists, in any
//     state, returns that job: a succeeded job's result is reused, and a
//     failed job stays failed until an operator resets or removes it. Once
//     the job is gone (removed by an operator, or expired after Lifetime)
//     the same input makes a fresh job.
//   - Claims. A claim moves the highest-priority ready job (inference before
//     validation, then oldest first) to running, counts an attempt and
//     issues a new random lease token. Two workers never hold one job.
//   - Leases fence results (DESIGN.md attack 15). Heartbeat, Finish and Fail
//     are compare-and-set on the lease: job id, attempt and token. A call
//     with any other lease is refused with a *StaleLeaseError and changes
//     nothing, so a worker whose lease was taken back can never overwrite
//     the result of the retry.
//   - Batches. Concurrent claims, and concurrent finishes and fails, are
//     written in batches, one statement and one commit a batch (see
//     batcher). Each call still gets its own answer, and a Finish or Fail
//     returns only once the commit holding it is durable.
//   - A lease is lost when the rescuer takes it back, not at the instant it
//     expires. The rescuer returns a running job whose lease expired to
//     ready, up to MaxTry attempts in all, and fails it after that ("lease
//     expired after N tries"); only Reset revives it.
//   - Volatile kinds (Options.Volatile) are kept in the queue's memory, not
//     the driver: the same rules, no commit, gone with the process.
//   - Lifetime. A succeeded or failed job is removed Lifetime after it
//     finished (not after it was created), so a job that waited long in the
//     queue keeps its result for the full Lifetime.
//
// Times are read from Options.Now and kept to the microsecond, the
// precision both databases store.
package jobs

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"
)

// Kind says what a job does. The queue treats kinds as opaque labels,
// except for their claim priority (Priority).
type Kind string

// The kinds a host runs today.
const (
	KindInference  Kind = "inference"
	KindValidation Kind = "validation"
)

// InferenceFor is the kind of the inference jobs of one host: KindInference,
// a colon and the host's account. An inference job streams its output back
// to the host process whose user waits for it, so when hosts share one
// Postgres queue each host's workers must claim only that host's
// inferences; the kind keeps them apart. Validation jobs need no such
// scope: their result is read from the queue by whichever host awaits it.
func InferenceFor(host string) Kind { return KindInference + ":" + Kind(host) }

// IsInference reports whether k is KindInference or a host's InferenceFor.
func IsInference(k Kind) bool {
	return k == KindInference || strings.HasPrefix(string(k), string(KindInference)+":")
}

// Priority is the claim order of a kind: lower is claimed first. Inference
// serves a waiting user, so it goes before validation; kinds added later
// go after both.
func Priority(k Kind) int {
	switch {
	case IsInference(k):
		return 0
	case k == KindValidation:
		return 1
	}
	return 2
}

// State is where a job is in its life.
type State string

const (
	Ready     State = "ready"     // waiting for a worker
	Running   State = "running"   // held by a worker under a lease
	Succeeded State = "succeeded" // finished with a result
	Failed    State = "failed"    // finished with an error, or out of tries
)

// States lists every state, in life order.
var States = []State{Ready, Running, Succeeded, Failed}

// ErrorClassLeaseExpired is the error class of a job failed by the rescuer
// because its worker stopped heartbeating MaxTry times.
const ErrorClassLeaseExpired = "lease_expired"

// Job is one stored job. Jobs returned by the queue are copies: their
// slices belong to the caller.
type Job struct {
	ID    string // JobID(Kind, Input)
	Kind  Kind
	Input []byte
	State State
	// Attempt counts the claims of this job since it was created or last
	// reset: 1 while its first worker runs it.
	Attempt int
	// Worker holds the job while it runs; it stays set once the job
	// finished, naming the worker that finished it. Empty while ready.
	Worker string
	// LeaseToken and LeaseExpires are the current lease; empty unless
	// running. Get and List leave LeaseToken empty: only the claimer holds
	// it.
	LeaseToken   string
	LeaseExpires time.Time

	Created   time.Time
	Started   time.Time // the last claim; zero while never claimed
	Heartbeat time.Time // the last heartbeat (or the claim); zero while never claimed
	Finished  time.Time // zero until succeeded or failed

	Result     []byte // set when succeeded
	ErrorClass string // set when failed: a short machine-readable class
	Error      string // set when failed: a sentence for a person
}

// Lease is what a worker holds: the job, the attempt it claimed and the
// token issued with that claim. Heartbeat, Finish and Fail must present it.
type Lease struct {
	JobID   string
	Attempt int
	Token   string
}

// Claim is a job handed to a worker with its lease.
type Claim struct {
	Lease Lease
	// Expires is when the lease lapses unless the worker heartbeats.
	Expires time.Time
	Job     Job
}

// JobID is the id of the job of kind with canonical input: the hex SHA-256
// of the kind, a zero byte, and the input.
func JobID(kind Kind, input []byte) string {
	h := sha256.New()
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write(input)
	return hex.EncodeToString(h.Sum(nil))
}

// ShortID is the first 12 hex digits of an id, for messages.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}
