package storetest

import (
	"context"
	"sync"

	"github.com/devshard/devshard/store"
)

// BatchAppender is the write half of store.Diffs that group commit needs.
type BatchAppender interface {
	AppendDiffs(ctx context.Context, ds []store.Diff) error
}

// DefaultMaxBatch caps a group commit. Larger batches amortize the commit
// further but make every waiter wait for the whole batch.
const DefaultMaxBatch = 256

// Committer is a group-commit writer. Concurrent Append calls are gathered
// into one AppendDiffs batch, so one durable commit covers every diff that
// arrived while the previous commit was running. There is no timer: a lone
// writer pays one commit per diff and never waits for company.
//
// It lives here because only the suite, the crash test and the benchmarks
// use it, to show what AppendDiffs buys when many writers share a store; the
// host batches its own diffs (host/apply.go).
type Committer struct {
	s      BatchAppender
	max    int
	reqs   chan *request
	done   chan struct{} // closed by Close
	exited chan struct{} // closed when run has returned
	once   sync.Once
}

type request struct {
	d   store.Diff
	res chan error
}

// NewCommitter starts a group-commit writer over s. maxBatch <= 0 means
// DefaultMaxBatch. Close stops it.
func NewCommitter(s BatchAppender, maxBatch int) *Committer {
	if maxBatch <= 0 {
		maxBatch = DefaultMaxBatch
	}
	c := &Committer{s: s, max: maxBatch, reqs: make(chan *request, maxBatch), done: make(chan struct{}), exited: make(chan struct{})}
	go c.run()
	return c
}

// Append stores d with the next group commit and returns its own outcome,
// exactly as AppendDiff would. If ctx ends first, Append returns ctx.Err()
// and the diff may or may not be stored; retrying it is safe.
func (c *Committer) Append(ctx context.Context, d store.Diff) error {
	r := &request{d: d, res: make(chan error, 1)}
	select {
	case c.reqs <- r:
	case <-c.done:
		return store.Errorf(store.ErrClosed, "group commit writer is closed; diff %d of escrow %d was not stored", d.Nonce, d.EscrowID)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.res:
		return err
	case <-c.exited:
		// Queued as the writer stopped: it was answered, or never will be.
		select {
		case err := <-r.res:
			return err
		default:
			return store.Errorf(store.ErrClosed, "group commit writer closed before diff %d of escrow %d was stored", d.Nonce, d.EscrowID)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Queued is the number of diffs waiting for the next commit.
func (c *Committer) Queued() int { return len(c.reqs) }

// Close stops the writer after the batch in flight. Diffs queued behind it
// get store.ErrClosed.
func (c *Committer) Close() {
	c.once.Do(func() { close(c.done) })
	<-c.exited
}

func (c *Committer) run() {
	defer close(c.exited)
	batch := make([]*request, 0, c.max)
	diffs := make([]store.Diff, 0, c.max)
	for {
		select {
		case r := <-c.reqs:
			batch = append(batch[:0], r)
		case <-c.done:
			c.refuseQueued()
			return
		}
	gather:
		for len(batch) < c.max {
			select {
			case r := <-c.reqs:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		diffs = diffs[:0]
		for _, r := range batch {
			diffs = append(diffs, r.d)
		}
		errs := store.DiffErrors(c.s.AppendDiffs(context.Background(), diffs), len(diffs))
		for i, r := range batch {
			r.res <- errs[i]
			batch[i] = nil
		}
		clear(diffs)
	}
}

func (c *Committer) refuseQueued() {
	for {
		select {
		case r := <-c.reqs:
			r.res <- store.Errorf(store.ErrClosed, "group commit writer closed before diff %d of escrow %d was stored", r.d.Nonce, r.d.EscrowID)
		default:
			return
		}
	}
}
