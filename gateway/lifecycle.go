package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session"
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
	// price and reserved are what the start holds back: reserved at
	// price per token.
	price, reserved uint64
}

// charge is what the session charges for the inference, given the usage
// its executor reported.
func (st *started) charge(u executor.Usage) uint64 {
	return session.Charge(uint64(u.PromptTokens), uint64(u.CompletionTokens), st.price, st.reserved)
}

// start sequences a StartInference for req. Nonces whose executor is known
// to be down are skipped with diffs that only carry pooled txs. It returns
// once the diff is on its way to its executor; its write and the other
// members' deliveries follow, and mu is held until the write is done
// (prepareStart). The caller waits for the executor's answer (sent.wait)
// and the write (stored) without holding up the next request.
func (q *sequencer) start(ctx context.Context, req executor.Request) (*started, error) {
	q.mu.Lock()
	st, w, err := q.startLocked(ctx, req)
	if err != nil {
		q.mu.Unlock()
		return nil, err
	}
	stored := make(chan error, 1)
	st.stored = stored
	go func() {
		defer q.mu.Unlock()
		q.storeStart(ctx, w, stored)
	}()
	return st, nil
}

// startLocked sequences req's start and sends it to its executor; the
// returned diff is still to be stored. Call with mu held.
func (q *sequencer) startLocked(ctx context.Context, req executor.Request) (*started, *written, error) {
	if q.settling || q.replica.Phase() != sessionpb.Phase_PHASE_ACTIVE {
		if q.replica.Phase() != sessionpb.Phase_PHASE_ACTIVE && !q.settling {
			q.log.Error("escrow left open past its ACTIVE phase", "escrow", q.id(), "phase", q.replica.Phase())
		}
		return nil, nil, errEscrowLow
	}
	if err := q.catchUp(ctx); err != nil {
		return nil, nil, err
	}
	in := executor.PromptTokenBound(req.Model, req.Messages)
	reserve, err := session.Reservation(in, uint64(req.MaxTokens), q.snap.TokenPrice)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w; lower max_tokens or shorten the prompt", ErrRequest, err)
	}
	if fresh := q.snap.Amount - min(q.snap.Amount, q.snap.CreationFee); reserve > fresh {
		return nil, nil, fmt.Errorf("%w: the request reserves (%d prompt + %d max tokens) × price %d = %d, more than a whole escrow of %d holds; lower max_tokens",
			ErrRequest, in, req.MaxTokens, q.snap.TokenPrice, reserve, fresh)
	}
	if reserve > q.replica.Balance() || q.replica.Nonce()+uint64(len(q.snap.Group))+2 >= q.snap.MaxNonce {
		return nil, nil, errEscrowLow
	}
	now := time.Now()
	if up := q.out.upAt(now); !up.IsZero() {
		// Every member is down: a start now would only sequence diffs
		// nobody takes, each paying the per-diff fee.
		return nil, nil, fmt.Errorf("%w: every member of escrow %d is down or its storage is failing; retry in %s",
			ErrNoHost, q.id(), up.Sub(now).Round(time.Second))
	}
	for skips := 0; skips < len(q.snap.Group); skips++ {
		if !q.out.isDown(q.executorMember(q.replica.Nonce()+1), now) {
			break
		}
		if _, err := q.stepLocked(ctx, false); err != nil {
			return nil, nil, err
		}
	}
	id := q.replica.Nonce() + 1
	hash := req.PromptHash()
	startTx := &sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{
		InferenceId: id, InputTokens: in, MaxTokens: uint64(req.MaxTokens), PromptHash: hash[:], Model: req.Model,
	}}}
	w, err := q.prepareStart(ctx, []*sessionpb.Tx{startTx}, map[uint64]executor.Request{id: req})
	if err != nil {
		return nil, nil, err
	}
	m := q.out.members[w.exec]
	return &started{nonce: id, url: m.url, addr: m.addr, exec: w.exec, sent: w.sent, price: q.snap.TokenPrice, reserved: reserve}, w, nil
}
