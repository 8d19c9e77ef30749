package host

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// Inference runs inference nonce of the escrow, which this host must
// execute, streaming text to emit. It pools a signed ConfirmStart before it
// starts and a signed FinishInference when the executor is done.
func (e *Engine) Inference(ctx context.Context, escrowID, nonce uint64, req executor.Request, emit func(string) error) (executor.Result, error) {
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return executor.Result{}, err
	}
	r, ok := en.s.Record(nonce)
	switch {
	case !ok:
		en.mu.Unlock()
		return executor.Result{}, fmt.Errorf("%w: inference %d of escrow %d is not live here (not yet started by a diff, or sealed)", ErrBadInput, nonce, escrowID)
	case !en.holds(r.ExecutorSlot):
		en.mu.Unlock()
		return executor.Result{}, fmt.Errorf("%w: inference %d is assigned to slot %d, which this host does not hold", ErrNotExecutor, nonce, r.ExecutorSlot)
	case r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING || en.ran[nonce]:
		en.mu.Unlock()
		return executor.Result{}, fmt.Errorf("%w: inference %d was already run (it is %s); it runs once", ErrBadInput, nonce, r.Status)
	}
	if h := req.PromptHash(); !bytes.Equal(h[:], r.PromptHash) || uint64(req.MaxTokens) != r.MaxTokens {
		en.mu.Unlock()
		return executor.Result{}, fmt.Errorf("%w: the request does not match what diff %d started (prompt hash or max tokens)", ErrBadInput, nonce)
	}
	en.requests[nonce] = req
	en.ran[nonce] = true
	confirm := &sessionpb.Tx{Slot: r.ExecutorSlot, Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: nonce, ConfirmedAt: e.cfg.Now().Unix()}}}
	if err := session.SignTx(e.cfg.Key, escrowID, confirm); err != nil {
		en.mu.Unlock()
		return executor.Result{}, err
	}
	en.pool.add(confirm, en.s.Nonce(), true)
	en.mu.Unlock()

	res, err := e.cfg.Executor.Execute(ctx, req, emit)
	if err != nil {
		return executor.Result{}, err
	}
	hash := res.ResponseHash()
	finish := &sessionpb.Tx{Slot: r.ExecutorSlot, Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{
		InferenceId: nonce, InputTokens: uint64(res.Usage.PromptTokens), OutputTokens: uint64(res.Usage.CompletionTokens), ResponseHash: hash[:],
	}}}
	if err := session.SignTx(e.cfg.Key, escrowID, finish); err != nil {
		return executor.Result{}, err
	}
	en.mu.Lock()
	en.pool.add(finish, en.s.Nonce(), true)
	en.mu.Unlock()
	return res, nil
}

// maybeValidate re-runs a peer's finished inference when this host is
// sampled for it, and pools its vote. It runs with en.mu held and returns at
// once; the re-run happens in the background.
func (e *Engine) maybeValidate(ctx context.Context, en *entry, f *sessionpb.FinishInference, finishRoot []byte) {
	r, ok := en.s.Record(f.InferenceId)
	if !ok || r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED {
		return
	}
	slot, ok := e.eligibleSlot(en, r)
	if !ok || !session.Sampled(en.snap, finishRoot, r.Id, slot) {
		return
	}
	e.validate(en, r, slot)
}

// eligibleSlot is the slot this host votes with on r: none if this host is
// the executor's participant, since no one votes on their own work.
func (e *Engine) eligibleSlot(en *entry, r *sessionpb.InferenceRecord) (uint32, bool) {
	if string(en.snap.Group[r.ExecutorSlot]) == string(e.addr[:]) {
		return 0, false
	}
	return en.slots[0], true
}

// validate re-runs r in the background and pools a Validation vote.
func (e *Engine) validate(en *entry, r *sessionpb.InferenceRecord, slot uint32) {
	req, ok := en.requests[r.Id]
	if !ok {
		e.log.Warn("cannot validate: request payload unknown", "escrow", en.snap.EscrowId, "inference", r.Id)
		return
	}
	escrowID := en.snap.EscrowId
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(max(en.snap.ExecutionTimeoutSeconds, 1))*time.Second)
		defer cancel()
		res, err := e.cfg.Executor.Execute(ctx, req, func(string) error { return nil })
		valid := false
		var hash [32]byte
		if err == nil {
			hash = res.ResponseHash()
			valid = bytes.Equal(hash[:], r.ResponseHash) && uint64(res.Usage.CompletionTokens)+uint64(res.Usage.PromptTokens) == r.TokensUsed
		}
		vote := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: r.Id, Valid: valid, ResponseHash: hash[:]}}}
		if err := session.SignTx(e.cfg.Key, escrowID, vote); err != nil {
			e.log.Error("sign validation", "err", err)
			return
		}
		en.mu.Lock()
		if en.s.MayInclude(vote) {
			en.pool.add(vote, en.s.Nonce(), true)
		}
		en.mu.Unlock()
		e.cfg.Metrics.validation(valid)
	}()
}

// challenged makes every eligible host re-run an inference that a validator
// voted invalid: the group resolves it by majority.
func (e *Engine) challenged(en *entry, v *sessionpb.Validation) {
	r, ok := en.s.Record(v.InferenceId)
	if !ok || r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED {
		return
	}
	slot, ok := e.eligibleSlot(en, r)
	if !ok || voted(r.ValidVotes, slot) || voted(r.InvalidVotes, slot) {
		return
	}
	e.validate(en, r, slot)
}

func voted(bitmap []byte, slot uint32) bool { return bitmap[slot/8]&(1<<(slot%8)) != 0 }

// Tick votes to time out inferences of other executors that have stayed
// open past the escrow's execution timeout, by this host's clock. The
// daemon calls it every second.
func (e *Engine) Tick(ctx context.Context) {
	now := e.cfg.Now()
	for _, en := range e.entries() {
		en.mu.Lock()
		if en.loaded {
			e.voteTimeouts(en, now)
		}
		en.mu.Unlock()
	}
}

func (e *Engine) voteTimeouts(en *entry, now time.Time) {
	limit := time.Duration(en.snap.ExecutionTimeoutSeconds) * time.Second
	for _, r := range en.s.State().Live {
		if r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING && r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED {
			continue
		}
		slot, ok := e.eligibleSlot(en, r)
		if !ok || voted(r.TimeoutVotes, slot) {
			continue
		}
		first, ok := en.seen[r.Id]
		if !ok {
			en.seen[r.Id] = now
			continue
		}
		if now.Sub(first) < limit {
			continue
		}
		vote := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Timeout{Timeout: &sessionpb.TimeoutInference{InferenceId: r.Id}}}
		if err := session.SignTx(e.cfg.Key, en.snap.EscrowId, vote); err != nil {
			e.log.Error("sign timeout vote", "err", err)
			return
		}
		if en.pool.add(vote, en.s.Nonce(), true) {
			e.log.Info("voted timeout", "escrow", en.snap.EscrowId, "inference", r.Id, "open_for", now.Sub(first))
		}
	}
}

// Gossip takes a peer's signed tx so this host can carry it to the gateway
// too. Only txs signed by the holder of the slot they name are accepted.
func (e *Engine) Gossip(ctx context.Context, escrowID uint64, raw []byte) error {
	var tx sessionpb.Tx
	if err := tx.Unmarshal(raw); err != nil {
		return fmt.Errorf("%w: tx does not decode: %v", ErrBadInput, err)
	}
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return err
	}
	defer en.mu.Unlock()
	if err := session.VerifyHostTx(en.snap, &tx, e.cfg.Auth); err != nil {
		return fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	if en.s.MayInclude(&tx) {
		en.pool.add(&tx, en.s.Nonce(), false)
	}
	return nil
}

// Wait blocks until background validations have finished.
func (e *Engine) Wait() { e.wg.Wait() }

// entries lists the session entries, loaded or not.
func (e *Engine) entries() []*entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*entry, 0, len(e.sessions))
	for _, en := range e.sessions {
		out = append(out, en)
	}
	return out
}
