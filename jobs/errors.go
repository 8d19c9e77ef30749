package jobs

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of queue errors. The queue returns them inside a typed error that
// carries the sentence and its context; match with errors.Is. The HTTP
// layer maps them to statuses: ErrNotFound 404, ErrStaleLease and
// ErrWrongState 409, ErrTooLarge 413, ErrInvalid 400.
var (
	// ErrNotFound: no job has that id (never enqueued, removed, or expired).
	ErrNotFound = errors.New("job not found")
	// ErrStaleLease: the lease presented is not the job's current lease. See
	// StaleLeaseError.
	ErrStaleLease = errors.New("stale lease")
	// ErrWrongState: an operation was asked of a job in a state it does not
	// apply to (resetting a job that has not failed). See StateError.
	ErrWrongState = errors.New("job in the wrong state")
	// ErrTooLarge: an input, result or error is over Options.MaxBytes. See
	// TooLargeError.
	ErrTooLarge = errors.New("too large")
	// ErrInvalid: a malformed argument (empty kind, empty worker id).
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed: the queue was closed.
	ErrClosed = errors.New("job queue closed")
)

// StaleLeaseError refuses a heartbeat or result whose lease is no longer
// the job's: the lease was taken back and the job retried, reset, finished
// by the same lease before, or removed.
type StaleLeaseError struct {
	Lease Lease
	// Exists is false when the job is gone; State and Attempt are then zero.
	Exists bool
	// State and Attempt are the job's now.
	State   State
	Attempt int
}

func (e *StaleLeaseError) Error() string {
	lead := fmt.Sprintf("job %s: the lease of attempt %d is stale", ShortID(e.Lease.JobID), e.Lease.Attempt)
	switch {
	case !e.Exists:
		return lead + ": the job no longer exists (removed or expired)"
	case e.State == Ready:
		return lead + ": the lease was taken back and the job waits for another worker"
	case e.Attempt != e.Lease.Attempt:
		return fmt.Sprintf("%s: the job is at attempt %d now (%s)", lead, e.Attempt, e.State)
	case e.State != Running:
		return fmt.Sprintf("%s: the job has finished already (%s)", lead, e.State)
	}
	return lead + ": the token does not match the one issued with the claim (the job was reset and claimed again, or the lease is forged)"
}

// Is matches ErrStaleLease.
func (e *StaleLeaseError) Is(target error) bool { return target == ErrStaleLease }

// NotFoundError names the ids that match no job.
type NotFoundError struct {
	IDs []string
}

func (e *NotFoundError) Error() string {
	if len(e.IDs) == 1 {
		return fmt.Sprintf("no job %s (never enqueued, removed, or expired)", e.IDs[0])
	}
	return fmt.Sprintf("no jobs %s (never enqueued, removed, or expired)", strings.Join(e.IDs, ", "))
}

// Is matches ErrNotFound.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// StateError is an operation refused because a job is not in a state it
// applies to.
type StateError struct {
	Op    string // "reset", ...
	ID    string
	State State   // the job's state
	Want  []State // the states Op applies to
}

func (e *StateError) Error() string {
	want := make([]string, len(e.Want))
	for i, s := range e.Want {
		want[i] = string(s)
	}
	return fmt.Sprintf("cannot %s job %s: it is %s; %s applies only to %s jobs",
		e.Op, ShortID(e.ID), e.State, e.Op, strings.Join(want, " or "))
}

// Is matches ErrWrongState.
func (e *StateError) Is(target error) bool { return target == ErrWrongState }

// TooLargeError refuses a value over Options.MaxBytes.
type TooLargeError struct {
	What  string // "input", "result", "error"
	Size  int
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("job %s of %d bytes refused: the limit is %d bytes", e.What, e.Size, e.Limit)
}

// Is matches ErrTooLarge.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// invalid is an ErrInvalid with a sentence.
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}
