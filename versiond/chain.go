package versiond

import (
	"context"
	"log/slog"
	"slices"
	"time"
)

// Chain is what a ChainSource reads of the chain. *chainclient.Client is
// one; chainclient imports this package for Version, so this package
// names the methods it needs instead of importing chainclient.
type Chain interface {
	// FollowBlocks calls fn now, at each new block, and at each poll
	// interval while it cannot follow blocks or between them, until ctx
	// ends.
	FollowBlocks(ctx context.Context, poll time.Duration, fn func(height int64)) error
	// ApprovedVersions reads the approved list, in the chain's order.
	ApprovedVersions(ctx context.Context) ([]Version, error)
	// InSync is nil when the node the list is read from has caught up
	// with the chain: it is not syncing blocks and its latest block is no
	// more than stallAfter old (0: not checked). Otherwise it says why.
	InSync(ctx context.Context, stallAfter time.Duration) error
}

// ChainSource is the approved list as the chain holds it. It reads the
// list at every new block and at every poll, and delivers it when it
// differs from the last list delivered. A block is the only way the list
// can change, so following blocks learns of a governance change within a
// block; the poll covers a block subscription that dropped.
//
// It asks whether its node is in sync before every read, and delivers
// nothing while the node is not: it logs why and asks again at the next
// block or poll. Asking before the read is enough, since a node's state
// only moves forward.
type ChainSource struct {
	Chain Chain
	// Poll is how often the list is read besides at new blocks. (30s)
	Poll time.Duration
	// StallAfter: a node whose latest block is older than this may be
	// lagging, so its list is not acted on. 0 turns the check off and
	// leaves only the node's own catching-up flag.
	StallAfter time.Duration
	// Logger gets why a list was not delivered. (slog.Default())
	Logger *slog.Logger
}

// chainReadTimeout bounds one check and read of the approved list.
const chainReadTimeout = 10 * time.Second

// Watch follows the chain until ctx ends.
func (s ChainSource) Watch(ctx context.Context, apply func([]Version)) error {
	poll, log := s.Poll, s.Logger
	if poll <= 0 {
		poll = 30 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	var last []Version
	delivered := false
	// why is the reason the last read delivered nothing, so a reason that
	// holds for many blocks is logged once, and its end once.
	var why string
	hold := func(reason string, err error) {
		if ctx.Err() != nil {
			return // shutting down: not the node's fault
		}
		if msg := reason + ": " + err.Error(); msg != why {
			log.Warn("versiond: "+reason+"; waiting for the next block", "err", err)
			why = msg
		}
	}
	err := s.Chain.FollowBlocks(ctx, poll, func(int64) {
		// A node that takes the call and never answers must not stop the
		// following: the read is given up and made again at the next block.
		rctx, cancel := context.WithTimeout(ctx, chainReadTimeout)
		defer cancel()
		if err := s.Chain.InSync(rctx, s.StallAfter); err != nil {
			hold("not acting on the approved list of a node that is not in sync", err)
			return
		}
		list, err := s.Chain.ApprovedVersions(rctx)
		if err != nil {
			hold("reading the approved list failed", err)
			return
		}
		if why != "" {
			log.Info("versiond: the chain node is in sync and answers again")
			why = ""
		}
		if delivered && slices.Equal(list, last) {
			return
		}
		last, delivered = list, true
		log.Info("versiond: approved list read from the chain", "versions", len(list))
		apply(slices.Clone(list))
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}
