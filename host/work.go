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

// Inference streams inference nonce of the escrow, which this host must
// execute, to emit. Usually the diff that starts it has started a run
// already (run.go), and the stream attaches to it; otherwise (the payload
// did not come with the diff, or the host restarted) it runs here. Either
// way it pools a signed ConfirmStart and a signed FinishInference and
// returns both, so the caller can hand them to the gateway at once: a host
// that crashes after answering has then still delivered its proof of work.
func (e *Engine) Inference(ctx context.Context, escrowID, nonce uint64, req executor.Request, emit func(string) error) (executor.Result, []*sessionpb.Tx, error) {
	// The gateway asks beside the diff that starts the inference: attach
	// to the run that diff started, or wait a while for it.
	ahead, err := e.awaitRun(ctx, escrowID, nonce)
	if err != nil {
		return executor.Result{}, nil, err
	}
	if ahead != nil {
		return e.stream(ctx, ahead, req, emit)
	}
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return executor.Result{}, nil, err
	}
	r, ok := en.s.Record(nonce)
	switch {
	case !ok && en.s.Nonce() < nonce:
		en.mu.Unlock()
		return executor.Result{}, nil, fmt.Errorf("%w: inference %d of escrow %d is not live here: no diff started it within %s", ErrBadInput, nonce, escrowID, e.cfg.StartWait)
	case !ok:
		en.mu.Unlock()
		return executor.Result{}, nil, fmt.Errorf("%w: inference %d of escrow %d is not live here (not yet started by a diff, or sealed)", ErrBadInput, nonce, escrowID)
	case !en.holds(r.ExecutorSlot):
		en.mu.Unlock()
		return executor.Result{}, nil, fmt.Errorf("%w: inference %d is assigned to slot %d, which this host does not hold", ErrNotExecutor, nonce, r.ExecutorSlot)
	}
	if why := en.pool.overdueOwn(en.s.Nonce(), en.snap.SealGraceNonces, func(_ string, tx *sessionpb.Tx) bool { return en.s.CheckHostTx(tx) == nil }); why != "" && !en.ran[nonce] {
		en.mu.Unlock()
		e.cfg.Metrics.refused()
		return executor.Result{}, nil, fmt.Errorf("%w: inference %d of escrow %d is not run: %s", ErrOverdue, nonce, escrowID, why)
	}
	if h := req.PromptHash(); !bytes.Equal(h[:], r.PromptHash) || uint64(req.MaxTokens) != r.MaxTokens {
		en.mu.Unlock()
		return executor.Result{}, nil, fmt.Errorf("%w: the request does not match what diff %d started (prompt hash or max tokens)", ErrBadInput, nonce)
	}
	if r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING || en.ran[nonce] {
		en.mu.Unlock()
		return executor.Result{}, nil, fmt.Errorf("%w: inference %d was already run (it is %s); it runs once", ErrBadInput, nonce, r.Status)
	}
	en.requests[nonce] = req
	en.ran[nonce] = true
	confirm := &sessionpb.Tx{Slot: r.ExecutorSlot, Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: nonce, ConfirmedAt: e.cfg.Now().Unix()}}}
	if err := e.signTx(en.snap, confirm); err != nil {
		en.mu.Unlock()
		return executor.Result{}, nil, err
	}
	en.pool.add(confirm, en.s.Nonce(), true)
	en.mu.Unlock()

	res, err := e.RunInference(ctx, escrowID, nonce, req, emit)
	if err != nil {
		return executor.Result{}, nil, err
	}
	finish := finishTx(r.ExecutorSlot, nonce, res)
	if err := e.signTx(en.snap, finish); err != nil {
		return executor.Result{}, nil, err
	}
	en.mu.Lock()
	en.pool.add(finish, en.s.Nonce(), true)
	en.mu.Unlock()
	return res, []*sessionpb.Tx{confirm, finish}, nil
}

// maybeValidate queues the re-run of a peer's finished inference when the
// sampling picked a slot this host holds; once the job has run, each held
// slot that the sampling picked votes (session.SampledSlots; apply refuses
// any other until someone challenges). It runs with en.mu held and returns
// at once; the re-run happens through the job queue (jobs.go).
func (e *Engine) maybeValidate(ctx context.Context, en *entry, f *sessionpb.FinishInference) {
	if e.cfg.ProxyValidation {
		return // the proxy host samples and votes (proxy.go)
	}
	r, ok := en.s.Record(f.InferenceId)
	if !ok || r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED {
		return
	}
	var mine []uint32
	for _, slot := range en.s.SampledSlots(r) {
		if en.holds(slot) {
			mine = append(mine, slot)
		}
	}
	if len(mine) > 0 {
		e.enqueueValidation(en, r)
	}
}

// eligibleSlots are the slots this host votes with on r: every slot it
// holds that session.MayVote allows, since thresholds count slots (a host
// holding two slots has two votes). None, when this host is the executor's
// participant.
func (e *Engine) eligibleSlots(en *entry, r *sessionpb.InferenceRecord) []uint32 {
	var out []uint32
	for _, slot := range en.slots {
		if en.s.MayVote(r.ExecutorSlot, slot) {
			out = append(out, slot)
		}
	}
	return out
}

// challenged makes every eligible host re-run an inference that a validator
// voted invalid: the group resolves it by a majority of slots.
func (e *Engine) challenged(en *entry, v *sessionpb.Validation) {
	if e.cfg.ProxyValidation {
		return
	}
	r, ok := en.s.Record(v.InferenceId)
	if !ok || r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED {
		return
	}
	var slots []uint32
	for _, slot := range e.eligibleSlots(en, r) {
		if !voted(r.ValidVotes, slot) && !voted(r.InvalidVotes, slot) {
			slots = append(slots, slot)
		}
	}
	if len(slots) > 0 {
		e.enqueueValidation(en, r)
	}
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
	e.regossip(ctx) // own txs the gateway keeps leaving out go to the peers
}

func (e *Engine) voteTimeouts(en *entry, now time.Time) {
	limit := time.Duration(en.snap.ExecutionTimeoutSeconds) * time.Second
	for _, r := range en.s.State().Live {
		if r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING && r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED {
			continue
		}
		slots := e.eligibleSlots(en, r)
		if len(slots) == 0 {
			continue
		}
		// The executor's work in this pool (its own, or gossiped because
		// the gateway keeps leaving it out) means the gateway stalls the
		// inference, not the executor: no vote, none left on offer, and
		// the timeout clock starts again once the work is carried.
		exec := string(en.snap.Group[r.ExecutorSlot])
		isExec := func(slot uint32) bool { return int(slot) < len(en.snap.Group) && string(en.snap.Group[slot]) == exec }
		applies := func(tx *sessionpb.Tx) bool { return en.s.CheckHostTx(tx) == nil }
		stale := func(p *pooled) bool {
			return en.s.Nonce()-p.since > en.snap.SealGraceNonces/2 || now.Sub(p.at) > limit/2
		}
		if en.pool.holdsWork(r.Id, isExec, applies, stale) {
			en.pool.withdrawTimeouts(r.Id)
			delete(en.seen, r.Id)
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
		for _, slot := range slots {
			if voted(r.TimeoutVotes, slot) {
				continue
			}
			vote := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Timeout{Timeout: &sessionpb.TimeoutInference{InferenceId: r.Id}}}
			if err := e.signTx(en.snap, vote); err != nil {
				e.log.Error("sign timeout vote", "err", err)
				return
			}
			if en.pool.add(vote, en.s.Nonce(), true) {
				e.log.Info("voted timeout", "escrow", en.snap.EscrowId, "inference", r.Id, "slot", slot, "open_for", now.Sub(first))
			}
		}
	}
}

// Gossip takes a peer's signed tx so this host can carry it to the gateway
// too. Only txs signed by the holder of the slot they name, that the
// session can include now, are pooled; others are refused with
// ErrForbidden or ErrNotIncludable.
func (e *Engine) Gossip(ctx context.Context, escrowID uint64, raw []byte) error {
	tx, err := session.DecodeTx(raw)
	if err != nil {
		return fmt.Errorf("%w: the gossiped tx is refused: %w", ErrBadInput, err)
	}
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return err
	}
	defer en.mu.Unlock()
	if err := session.VerifyHostTxWith(en.snap, tx, e.cfg.Auth, e.memo); err != nil {
		return fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	// Pool only what the session can take: a tx for an inference that does
	// not exist, or in the wrong status, would sit in the pool and be
	// offered to the gateway for nothing.
	if err := en.s.Includable(tx); err != nil {
		return fmt.Errorf("%w: escrow %d at nonce %d: %w", ErrNotIncludable, escrowID, en.s.Nonce(), err)
	}
	// A tx for a slot this host holds, signed by a key its account
	// granted (its proxy host's vote), is the host's own: it is re-gossiped
	// and withholds signatures while left out, as the host's own votes do.
	en.pool.add(tx, en.s.Nonce(), en.holds(tx.Slot))
	return nil
}

// Wait blocks until background work has finished: gossip pushes, and the
// validations queued while in-process workers run them.
func (e *Engine) Wait() {
	e.wg.Wait()
	e.waitJobs()
}

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
