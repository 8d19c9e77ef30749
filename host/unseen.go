package host

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/devshard/devshard/session/sessionpb"
)

// An escrow the host's chain node does not know may be one the gateway's
// node has just made: with several validators, the host's node may apply
// the escrow's block after the gateway sent its first request. A 404 then,
// remembered for MissFor, makes the gateway skip this host for a while. So
// the load of an escrow whose id is that new waits, at most UnseenWait, for
// the node to catch up, and looks once more.
//
// The request is not authenticated yet (who may call is in the escrow), so
// anyone can name any id. Only ids from the node's next escrow id to
// unseenAhead past it wait; each id loads once, its requests sharing the
// wait; and a wait sleeps without a lookup slot. A flood of such ids makes
// at most unseenAhead loads wait, and the lookups of real escrows go on.

// unseenAhead is how far past the node's next escrow id an id may be and
// still wait: room for the escrows of the block or two a node lags by. A
// block holds far more than a few dozen escrow creations (the chain bench
// opens 1,508 in a few blocks), and a wait costs a sleeping goroutine and
// no lookup slot, so the window is wide.
const unseenAhead = 1024

// unseenPoll is how often a waiting load asks the node's next escrow id.
const unseenPoll = 100 * time.Millisecond

// lookupNew asks the chain for an escrow this host has never seen and, if
// the node does not know it yet but may soon (awaitEscrow), asks once more
// after the wait.
func (e *Engine) lookupNew(ctx context.Context, escrowID uint64) (*sessionpb.EscrowSnapshot, error) {
	snap, err := e.lookup(ctx, escrowID)
	if !errors.Is(err, ErrUnknownEscrow) || !e.awaitEscrow(ctx, escrowID) {
		return snap, err
	}
	return e.lookup(ctx, escrowID)
}

// awaitEscrow waits until the node's next escrow id is past escrowID, at
// most UnseenWait, and reports whether another lookup is worth it: not for
// an id too far ahead, which it does not wait for, nor when the node's next
// id cannot be read.
func (e *Engine) awaitEscrow(ctx context.Context, escrowID uint64) bool {
	if e.cfg.Seq == nil || e.cfg.UnseenWait <= 0 {
		return false
	}
	next, err := e.nextEscrowID(ctx)
	switch {
	case err != nil:
		// Debug: anyone can name unknown escrows, and the log is the operator's.
		e.log.Debug("escrow unknown without waiting: cannot read the chain's next escrow id", "escrow", escrowID, "err", err)
		return false
	case escrowID < next:
		return true // the chain deletes no escrow: the node applied its block since the lookup
	case escrowID-next >= unseenAhead:
		return false
	}
	deadline := time.NewTimer(e.cfg.UnseenWait)
	defer deadline.Stop()
	poll := time.NewTicker(unseenPoll)
	defer poll.Stop()
	for {
		select {
		case <-deadline.C:
			return true // one last look: the node may have caught up since the last poll
		case <-ctx.Done():
			return false
		case <-poll.C:
		}
		if next, err := e.nextEscrowID(ctx); err == nil && escrowID < next {
			return true
		}
	}
}

// nextID is the node's next escrow id as the engine last read it, shared
// by the loads that wait: however many wait, the node is asked at most
// once per unseenPoll.
type nextID struct {
	mu sync.Mutex // held while the node is asked, so loads asking at once share its answer
	id uint64
	at time.Time // when id was read; zero: never
}

// nextEscrowID is the node's next escrow id, read afresh unless a load read
// it within unseenPoll.
func (e *Engine) nextEscrowID(ctx context.Context) (uint64, error) {
	n := &e.next
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.at.IsZero() && time.Since(n.at) < unseenPoll {
		return n.id, nil
	}
	id, err := e.askNextEscrowID(ctx)
	if err != nil {
		return 0, err
	}
	n.id, n.at = id, time.Now()
	return id, nil
}

// askNextEscrowID asks the node its next escrow id, holding one of the
// Lookups slots like a lookup: the question costs the node as much.
func (e *Engine) askNextEscrowID(ctx context.Context) (uint64, error) {
	e.lookups <- struct{}{}
	defer func() { <-e.lookups }()
	return e.cfg.Seq.NextEscrowID(ctx)
}
