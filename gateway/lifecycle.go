package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// lowWater: an escrow whose balance falls below this share of its amount
// stops taking requests, and a new one is opened before it runs out.
const lowWater = 10 // percent

// started is a sequenced StartInference on its way to the hosts.
type started struct {
	nonce uint64
	url   string          // the executor's
	addr  signing.Address // the executor's account
	exec  int             // the executor's member index
	sent  *delivery
	// stored reports the write of the start's diff; the app sees nothing
	// of the answer before it has landed.
	stored <-chan error
}

// start sequences a StartInference for req. Nonces whose executor is known
// to be down are skipped with diffs that only carry pooled txs. It returns
// once the diff is on its way to its executor; its write and the other
// members' deliveries follow (startStep). The caller waits for the
// executor's answer (sent.wait) and the write (stored) without holding up
// the next request.
func (q *sequencer) start(ctx context.Context, req executor.Request) (*started, error) {
	q.mu.Lock()
	st, err := q.startLocked(ctx, req)
	if err != nil {
		q.mu.Unlock() // on success the start's write unlocks it (startStep)
	}
	return st, err
}

func (q *sequencer) startLocked(ctx context.Context, req executor.Request) (*started, error) {
	if q.status != StatusOpen || q.settling || q.replica.Phase() != sessionpb.Phase_PHASE_ACTIVE {
		if q.replica.Phase() != sessionpb.Phase_PHASE_ACTIVE && !q.settling {
			q.g.log.Error("escrow left open past its ACTIVE phase", "escrow", q.id(), "phase", q.replica.Phase(), "status", q.status)
		}
		return nil, errEscrowLow
	}
	if err := q.catchUp(ctx); err != nil {
		return nil, err
	}
	in := uint64(executor.PromptTokens(req.Messages))
	reserve := (in + uint64(req.MaxTokens)) * q.snap.TokenPrice
	if fresh := q.snap.Amount - min(q.snap.Amount, q.snap.CreationFee); reserve > fresh {
		return nil, fmt.Errorf("%w: the request reserves (%d prompt + %d max tokens) × price %d = %d, more than a whole escrow of %d holds; lower max_tokens",
			ErrRequest, in, req.MaxTokens, q.snap.TokenPrice, reserve, fresh)
	}
	if reserve > q.replica.Balance() || q.replica.Nonce()+uint64(len(q.snap.Group))+2 >= q.snap.MaxNonce {
		return nil, errEscrowLow
	}
	now := time.Now()
	for skips := 0; skips < len(q.snap.Group); skips++ {
		if !q.isDown(q.executorMember(q.replica.Nonce()+1), now) {
			break
		}
		if _, err := q.stepPooled(ctx, false); err != nil {
			return nil, err
		}
	}
	id := q.replica.Nonce() + 1
	hash := req.PromptHash()
	startTx := &sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{
		InferenceId: id, InputTokens: in, MaxTokens: uint64(req.MaxTokens), PromptHash: hash[:], Model: req.Model,
	}}}
	exec := q.executorMember(id)
	sent, stored, err := q.startStep(ctx, []*sessionpb.Tx{startTx}, map[uint64]executor.Request{id: req})
	if err != nil {
		return nil, err
	}
	return &started{nonce: id, url: q.members[exec].url, addr: q.members[exec].addr, exec: exec, sent: sent, stored: stored}, nil
}

// stepPooled steps with the pooled txs only (and a FinalizeRound if
// finalize). Call with mu held.
func (q *sequencer) stepPooled(ctx context.Context, finalize bool) (*delivery, error) {
	return q.step(ctx, finalize)
}

// cost is what the session charges for a finished inference: tokens used
// times the price, capped at the reservation.
func (q *sequencer) cost(u executor.Usage, req executor.Request) uint64 {
	in := uint64(executor.PromptTokens(req.Messages))
	used := uint64(u.PromptTokens + u.CompletionTokens)
	return min(used, in+uint64(req.MaxTokens)) * q.snap.TokenPrice
}

// markDown makes the next starts skip the host at url for a while.
func (q *sequencer) markDown(url string) {
	q.net.Lock()
	defer q.net.Unlock()
	for i, m := range q.members {
		if m.url == url {
			q.down[i] = time.Now().Add(downFor)
		}
	}
}

// flush carries pooled txs in a diff if the session has been quiet for
// idle: finishes of the last requests, validations and timeout votes.
func (q *sequencer) flush(ctx context.Context, idle time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.settling || q.replica.Phase() == sessionpb.Phase_PHASE_SETTLEMENT || time.Since(q.lastDiff) < idle {
		return
	}
	q.collect(ctx)
	if len(q.carry()) == 0 {
		return
	}
	if _, err := q.stepPooled(ctx, false); err != nil {
		q.g.log.Warn("flush", "escrow", q.id(), "err", err)
	}
}

// settle finalizes the session, gathers the group's signatures on the final
// root and settles it on chain. It is resumable: each stage is read from
// the replica's phase and the state file, so calling it again after an
// error or a restart goes on where it stopped.
func (q *sequencer) settle(ctx context.Context) error {
	// One settlement at a time: drain and gatherSignatures release mu
	// while they wait, and a second settle must not interleave with them.
	q.settleMu.Lock()
	defer q.settleMu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.status == StatusSettled {
		return nil
	}
	q.settling = true
	if q.status != StatusSettling {
		if err := q.g.state.SetStatus(ctx, q.id(), StatusSettling, nil); err != nil {
			return err
		}
		q.status = StatusSettling
	}
	if done, err := q.closedOnChain(ctx); done || err != nil {
		return err
	}
	if q.replica.Phase() == sessionpb.Phase_PHASE_ACTIVE {
		q.collect(ctx)
		if _, err := q.stepPooled(ctx, true); err != nil {
			return err
		}
	}
	if q.replica.Phase() == sessionpb.Phase_PHASE_FINALIZING {
		q.drain(ctx)
		sent, err := q.stepPooled(ctx, true)
		if err != nil {
			return err
		}
		sent.waitAll(ctx) // the members' signatures over the final root
	}
	if err := q.gatherSignatures(ctx); err != nil {
		if errors.Is(err, errClosedOnChain) {
			return nil
		}
		return err
	}
	m := q.settlement()
	if err := q.g.state.SetStatus(ctx, q.id(), StatusSettling, m); err != nil {
		return err
	}
	txHash, err := q.g.chain.SettleEscrow(ctx, m)
	if errors.Is(err, ErrExpired) {
		return q.expired(ctx, err)
	}
	if err != nil {
		return err
	}
	if err := q.g.state.SetSettled(ctx, q.id(), txHash); err != nil {
		return err
	}
	q.status = StatusSettled
	q.g.metrics.settlements.Inc()
	q.g.log.Info("escrow settled", "escrow", q.id(), "nonce", m.Nonce, "fees", m.Fees, "balance", m.Balance, "signatures", len(m.Signatures))
	return nil
}

// expired records an escrow that expired before its settlement landed.
// It is final: nothing is left to settle; the creator got everything back.
func (q *sequencer) expired(ctx context.Context, why error) error {
	q.g.log.Error("escrow expired before its settlement landed", "escrow", q.id(), "err", why)
	if err := q.g.state.SetSettled(ctx, q.id(), ""); err != nil {
		return err
	}
	q.status = StatusSettled
	return nil
}

// errClosedOnChain stops a settlement of an escrow the chain already closed.
var errClosedOnChain = errors.New("escrow already closed on chain")

// closedOnChain asks the chain whether the escrow is still open and, if it
// was settled by someone else (the hosts, past the deadline) or expired,
// records it as final and returns true. A chain that cannot be asked is
// not an answer: the settlement goes on.
func (q *sequencer) closedOnChain(ctx context.Context) (bool, error) {
	closed, txHash, err := q.g.chain.Closed(ctx, q.id())
	switch {
	case errors.Is(err, ErrExpired):
		return true, q.expired(ctx, err)
	case err != nil || !closed:
		return false, nil
	}
	if err := q.g.state.SetSettled(ctx, q.id(), txHash); err != nil {
		return false, err
	}
	q.status = StatusSettled
	q.g.log.Info("escrow was settled on chain by another party", "escrow", q.id(), "tx", txHash)
	return true, nil
}

// drain gives open inferences until the escrow's execution timeout (plus
// slack) to finish or be timed out by the group's votes, carrying the txs
// that resolve them, and collects the last validations.
func (q *sequencer) drain(ctx context.Context) {
	deadline := time.Now().Add(time.Duration(q.snap.ExecutionTimeoutSeconds)*time.Second + 5*time.Second)
	for {
		q.collect(ctx)
		if len(q.carry()) > 0 {
			if _, err := q.stepPooled(ctx, false); err != nil {
				q.g.log.Warn("drain", "escrow", q.id(), "err", err)
			}
		}
		if q.openRecords() == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
		q.mu.Lock()
	}
}

// gatherSignatures re-sends the final diff until members holding more than
// 2/3 of the slots have signed its root; a host that was down catches up
// on the way. Hosts answer a byte-identical diff with their stored
// signature.
func (q *sequencer) gatherSignatures(ctx context.Context) error {
	for attempt := 0; !q.quorum(); attempt++ {
		if attempt > 0 {
			q.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			q.mu.Lock()
			// The hosts stop signing once they settled it themselves.
			if done, err := q.closedOnChain(ctx); err != nil {
				return err
			} else if done {
				return errClosedOnChain
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("escrow %d: %d of %d slots signed the final root: %w", q.id(), q.signed(), len(q.snap.Group), ctx.Err())
		}
		last, err := q.g.state.Diffs(ctx, q.id(), q.replica.Nonce(), 1)
		if err != nil || len(last) == 0 {
			return fmt.Errorf("escrow %d: final diff not in the state file: %v", q.id(), err)
		}
		q.net.Lock()
		clear(q.down) // try everyone again
		q.net.Unlock()
		q.broadcast(ctx, last[0].Nonce, last[0].Data, last[0].Requests)
		if attempt == 30 {
			return fmt.Errorf("escrow %d: only %d of %d slots signed the final root", q.id(), q.signed(), len(q.snap.Group))
		}
	}
	return nil
}

// signed counts the slots whose signature over the latest root arrived.
func (q *sequencer) signed() int {
	q.net.Lock()
	defer q.net.Unlock()
	return len(q.sigs)
}
