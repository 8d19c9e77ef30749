package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devshard/devshard/session/sessionpb"
)

// settler finalizes one escrow's session, gathers the group's signatures
// on its final root and settles it on chain. It drives the other parts
// (sequencer, courier, signatures) through their own methods, each of
// which takes its own lock, so nothing is held while it waits for the
// hosts or the chain.
//
// run is held through a whole settle: one settlement at a time. mu
// guards status, and is held only to read or write it.
type settler struct {
	snap    *sessionpb.EscrowSnapshot
	seq     *sequencer
	out     *courier
	sigs    *signatures
	state   *State
	chain   Chain
	log     *slog.Logger
	metrics *Metrics

	run    sync.Mutex
	mu     sync.Mutex
	status EscrowStatus
	// retrying is set once a background loop retries the settlement
	// until it lands (Gateway.settleLater): a settlement that failed
	// anywhere, a storage fault included, is never given up.
	retrying atomic.Bool
}

func (s *settler) id() uint64 { return s.snap.EscrowId }

// current is the escrow's status.
func (s *settler) current() EscrowStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *settler) setStatus(st EscrowStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = st
}

// settle finalizes the session, gathers the group's signatures on the final
// root and settles it on chain. It is resumable: each stage is read from
// the replica's phase and the state file, so calling it again after an
// error or a restart goes on where it stopped.
func (s *settler) settle(ctx context.Context) error {
	s.run.Lock()
	defer s.run.Unlock()
	if s.current() == StatusSettled {
		return nil
	}
	// From here on no request starts, so the phase read below stays what
	// it is until this settlement steps.
	s.seq.stopTaking()
	if s.current() != StatusSettling {
		if err := s.state.SetStatus(ctx, s.id(), StatusSettling, nil); err != nil {
			return err
		}
		s.setStatus(StatusSettling)
	}
	if done, err := s.closedOnChain(ctx); done || err != nil {
		return err
	}
	if s.seq.phase() == sessionpb.Phase_PHASE_ACTIVE {
		s.out.collect(ctx)
		if _, err := s.seq.step(ctx, true); err != nil {
			return err
		}
	}
	if s.seq.phase() == sessionpb.Phase_PHASE_FINALIZING {
		s.drain(ctx)
		sent, err := s.seq.step(ctx, true)
		if err != nil {
			return err
		}
		sent.waitAll(ctx) // the members' signatures over the final root
	}
	if err := s.gatherSignatures(ctx); err != nil {
		if errors.Is(err, errClosedOnChain) {
			return nil
		}
		return err
	}
	m := s.seq.settlement()
	if err := s.sigs.attach(m); err != nil {
		return fmt.Errorf("escrow %d: %w", s.id(), err)
	}
	if err := s.state.SetStatus(ctx, s.id(), StatusSettling, m); err != nil {
		return err
	}
	txHash, err := s.chain.SettleEscrow(ctx, m)
	if errors.Is(err, ErrExpired) {
		return s.expired(ctx, err)
	}
	if err != nil {
		return err
	}
	if err := s.state.SetSettled(ctx, s.id(), txHash); err != nil {
		return err
	}
	s.setStatus(StatusSettled)
	s.metrics.settlements.Inc()
	s.log.Info("escrow settled", "escrow", s.id(), "nonce", m.Nonce, "fees", m.Fees, "balance", m.Balance, "signatures", len(m.Signatures))
	return nil
}

// expired records an escrow that expired before its settlement landed.
// It is final: nothing is left to settle; the creator got everything back.
func (s *settler) expired(ctx context.Context, why error) error {
	s.log.Error("escrow expired before its settlement landed", "escrow", s.id(), "err", why)
	if err := s.state.SetSettled(ctx, s.id(), ""); err != nil {
		return err
	}
	s.setStatus(StatusSettled)
	return nil
}

// errClosedOnChain stops a settlement of an escrow the chain already closed.
var errClosedOnChain = errors.New("escrow already closed on chain")

// closedOnChain asks the chain whether the escrow is still open and, if it
// was settled by someone else (the hosts, past the deadline) or expired,
// records it as final and returns true. A chain that cannot be asked is
// not an answer: the settlement goes on.
func (s *settler) closedOnChain(ctx context.Context) (bool, error) {
	closed, txHash, err := s.chain.Closed(ctx, s.id())
	switch {
	case errors.Is(err, ErrExpired):
		return true, s.expired(ctx, err)
	case err != nil || !closed:
		return false, nil
	}
	if err := s.state.SetSettled(ctx, s.id(), txHash); err != nil {
		return false, err
	}
	s.setStatus(StatusSettled)
	s.log.Info("escrow was settled on chain by another party", "escrow", s.id(), "tx", txHash)
	return true, nil
}

// drain gives open inferences until the escrow's execution timeout (plus
// slack) to finish or be timed out by the group's votes, carrying the txs
// that resolve them, and collects the last validations.
func (s *settler) drain(ctx context.Context) {
	deadline := time.Now().Add(time.Duration(s.snap.ExecutionTimeoutSeconds)*time.Second + 5*time.Second)
	for {
		s.out.collect(ctx)
		if err := s.seq.carryPooled(ctx); err != nil {
			s.log.Warn("drain", "escrow", s.id(), "err", err)
		}
		if s.seq.openRecords() == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// gatherSignatures re-sends the final diff until members holding a quorum
// of the slots have signed its root; a host that was down catches up on
// the way. Hosts answer a byte-identical diff with their stored
// signature.
func (s *settler) gatherSignatures(ctx context.Context) error {
	for attempt := 0; !s.sigs.quorum(); attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			// The hosts stop signing once they settled it themselves.
			if done, err := s.closedOnChain(ctx); err != nil {
				return err
			} else if done {
				return errClosedOnChain
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("escrow %d: %d of %d slots signed the final root: %w", s.id(), s.sigs.signed(), len(s.snap.Group), ctx.Err())
		}
		last, err := s.state.Diffs(ctx, s.id(), s.seq.nonce(), 1)
		if err != nil || len(last) == 0 {
			return fmt.Errorf("escrow %d: final diff not in the state file: %v", s.id(), err)
		}
		exec := -1 // the final diff starts nothing
		if len(last[0].Requests) > 0 {
			exec = s.seq.executorOf(last[0].Nonce)
		}
		s.out.tryAll()
		s.out.broadcast(ctx, last[0].Nonce, last[0].Data, last[0].Requests, exec)
		if attempt == 30 {
			return fmt.Errorf("escrow %d: only %d of %d slots signed the final root", s.id(), s.sigs.signed(), len(s.snap.Group))
		}
	}
	return nil
}
