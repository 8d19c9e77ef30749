package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

// DiffReply is what the host answers for an accepted diff.
type DiffReply struct {
	Nonce uint64
	Root  [32]byte
	// Signatures are this host's state signatures over Root, one per slot
	// it holds; empty when withheld.
	Signatures []*sessionpb.StateSignature
	// Withheld says why the host did not sign, if it did not.
	Withheld string
	// Mempool are the signed txs this host wants the gateway to include.
	Mempool []*sessionpb.Tx
}

// ApplyDiff verifies a diff through the protocol package, persists it, and
// only then publishes it and signs the new root. Requests carries the
// payloads of inferences the diff starts, keyed by inference id; the
// executor needs them to run, validators to re-run. A byte-identical replay
// of a stored diff answers as the first time did; other bytes at a stored
// nonce are a fork.
func (e *Engine) ApplyDiff(ctx context.Context, escrowID uint64, raw []byte, requests map[uint64]executor.Request) (*DiffReply, error) {
	var d sessionpb.Diff
	if err := d.Unmarshal(raw); err != nil {
		e.cfg.Metrics.reject("decode")
		return nil, fmt.Errorf("%w: diff does not decode: %v", ErrBadInput, err)
	}
	if d.EscrowId != escrowID {
		e.cfg.Metrics.reject(string(session.ReasonEscrow))
		return nil, fmt.Errorf("%w: diff is for escrow %d, posted to escrow %d", ErrBadInput, d.EscrowId, escrowID)
	}
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return nil, err
	}
	defer en.mu.Unlock()

	if d.Nonce != 0 && d.Nonce <= en.s.Nonce() {
		return e.replay(ctx, en, &d, raw)
	}
	for id, req := range requests {
		if err := checkRequest(&d, id, req); err != nil {
			e.cfg.Metrics.reject("request")
			return nil, err
		}
	}
	timer := e.cfg.Metrics.applyTimer()
	p, err := en.s.Prepare(&d)
	if err != nil {
		var de *session.DiffError
		if errors.As(err, &de) {
			e.cfg.Metrics.reject(string(de.Reason))
		}
		return nil, err
	}
	res := p.Result()
	// The inferences this host executes start now, beside the signing and
	// the durable write. Their streams may answer before the write ends;
	// their txs are pooled only once it has (run.go). A diff that is not
	// stored stops its runs.
	ahead, committed := e.runAhead(en, &d, requests), false
	if len(ahead) > 0 {
		// Let the run (the goroutine just started, next in line on this
		// thread) sign its ConfirmStart and stream first: the app waits
		// for it, while the state signature and the durable write below
		// wait only for this diff's reply.
		runtime.Gosched()
	}
	defer func() {
		for _, r := range ahead {
			if committed {
				r.stored = true
			} else {
				e.runs.drop(runKey{escrowID, r.nonce})
				delete(en.ran, r.nonce)
			}
		}
	}()
	rows := make([]store.Sealed, 0, len(res.Sealed))
	for _, r := range res.Sealed {
		b, err := r.Marshal()
		if err != nil {
			return nil, err
		}
		rows = append(rows, store.Sealed{EscrowID: escrowID, InferenceID: r.Id, Nonce: d.Nonce, Record: b})
	}
	// The new state's signatures, or why they are withheld, are decided
	// now, so that they are stored with the diff in one durable commit.
	withheld := en.pool.overdue(d.Nonce, en.snap.SealGraceNonces, func(key string, tx *sessionpb.Tx) bool {
		return !carried(&d, key) && p.MayInclude(tx)
	})
	var sigs []*sessionpb.StateSignature
	var sigRows []store.Signature
	if withheld == "" {
		if sigs, sigRows, err = e.signState(en, d.Nonce, res.Root); err != nil {
			return nil, err
		}
	}
	// Persist first: if the store fails, the prepared diff is dropped and
	// memory stays where disk is.
	if err := e.cfg.Store.AppendDiff(ctx, store.Diff{EscrowID: escrowID, Nonce: d.Nonce, Root: res.Root[:], Data: raw, Sealed: rows, Signatures: sigRows}); err != nil {
		e.cfg.Metrics.storageError()
		return nil, fmt.Errorf("diff %d of escrow %d not stored: %w", d.Nonce, escrowID, err)
	}
	e.cfg.Metrics.storageOK()
	if err := p.Commit(); err != nil {
		return nil, err // cannot happen under en.mu; kept as a guard
	}
	committed = true
	en.nonce.Store(d.Nonce)
	e.runs.poke()
	timer()
	e.cfg.Metrics.applied(en.s.Phase())
	for id, req := range requests {
		en.requests[id] = req
	}
	e.afterApply(ctx, en, &d, res)
	reply := &DiffReply{Nonce: d.Nonce, Root: res.Root, Signatures: sigs, Withheld: withheld, Mempool: en.pool.txs()}
	if withheld != "" {
		e.cfg.Metrics.withheld()
	}
	return reply, nil
}

// runAhead starts the inferences of d that this host executes and has the
// payloads of, and returns their runs. Call with en.mu held, once d is
// checked.
func (e *Engine) runAhead(en *entry, d *sessionpb.Diff, requests map[uint64]executor.Request) []*run {
	var out []*run
	for _, tx := range d.Txs {
		st := tx.GetStart()
		if st == nil {
			continue
		}
		req, ok := requests[st.InferenceId]
		slot := en.s.Executor(st.InferenceId)
		if !ok || !en.holds(slot) || en.ran[st.InferenceId] || req.Validate() != nil {
			continue
		}
		out = append(out, e.startRun(en, st.InferenceId, slot, req))
		en.ran[st.InferenceId] = true
	}
	return out
}

// carried reports whether diff d carries the tx with key.
func carried(d *sessionpb.Diff, key string) bool {
	for _, tx := range d.Txs {
		if session.TxKey(tx) == key {
			return true
		}
	}
	return false
}

// checkRequest ties a payload to the StartInference in the diff.
func checkRequest(d *sessionpb.Diff, id uint64, req executor.Request) error {
	for _, tx := range d.Txs {
		if st := tx.GetStart(); st != nil && st.InferenceId == id {
			h := req.PromptHash()
			if !bytes.Equal(h[:], st.PromptHash) {
				return fmt.Errorf("%w: the request for inference %d does not match its prompt hash", ErrBadInput, id)
			}
			if uint64(req.MaxTokens) != st.MaxTokens {
				return fmt.Errorf("%w: the request for inference %d asks %d max tokens, the diff reserved %d", ErrBadInput, id, req.MaxTokens, st.MaxTokens)
			}
			return nil
		}
	}
	return fmt.Errorf("%w: a request was sent for inference %d, which this diff does not start", ErrBadInput, id)
}

// replay answers a diff at an already applied nonce: identical bytes get the
// stored answer again, anything else is a fork.
func (e *Engine) replay(ctx context.Context, en *entry, d *sessionpb.Diff, raw []byte) (*DiffReply, error) {
	stored, err := e.cfg.Store.Diffs(ctx, d.EscrowId, d.Nonce, 1)
	if err != nil {
		return nil, err
	}
	if len(stored) == 0 || stored[0].Nonce != d.Nonce {
		return nil, fmt.Errorf("diff %d of escrow %d is applied but not stored", d.Nonce, d.EscrowId)
	}
	if !bytes.Equal(stored[0].Data, raw) {
		e.cfg.Metrics.reject("fork")
		return nil, store.NewForkError(d.EscrowId, d.Nonce, stored[0].Data, raw)
	}
	reply := &DiffReply{Nonce: d.Nonce, Mempool: en.pool.txs()}
	copy(reply.Root[:], stored[0].Root)
	sigs, err := e.cfg.Store.Signatures(ctx, d.EscrowId, d.Nonce)
	if err != nil {
		return nil, err
	}
	for _, s := range sigs {
		var ss sessionpb.StateSignature
		if err := ss.Unmarshal(s.Data); err == nil && en.holds(ss.Slot) {
			reply.Signatures = append(reply.Signatures, &ss)
		}
	}
	return reply, nil
}

// afterApply does what a new state calls for: snapshots, mempool upkeep,
// and validation of peers' finished work.
func (e *Engine) afterApply(ctx context.Context, en *entry, d *sessionpb.Diff, res *session.Result) {
	s := en.s
	if s.Nonce()%e.cfg.SnapshotEvery == 0 || s.Phase() == sessionpb.Phase_PHASE_SETTLEMENT {
		e.snapshot(ctx, en)
	}
	for _, tx := range d.Txs {
		en.pool.remove(session.TxKey(tx))
	}
	for _, r := range res.Sealed {
		delete(en.requests, r.Id)
		delete(en.seen, r.Id)
		delete(en.ran, r.Id)
		e.runs.drop(runKey{en.snap.EscrowId, r.Id})
	}
	en.pool.prune(s)
	for _, tx := range d.Txs {
		if f := tx.GetFinish(); f != nil {
			e.maybeValidate(ctx, en, f, res.Root[:])
		}
		if v := tx.GetValidation(); v != nil && !v.Valid {
			e.challenged(en, v)
		}
	}
}

func (e *Engine) snapshot(ctx context.Context, en *entry) {
	st, err := en.s.State().Marshal()
	if err != nil {
		e.log.Error("snapshot encode", "escrow", en.snap.EscrowId, "err", err)
		return
	}
	root := en.s.Root()
	if err := e.cfg.Store.PutSnapshot(ctx, store.Snapshot{EscrowID: en.snap.EscrowId, Nonce: en.s.Nonce(), Root: root[:], State: st}); err != nil {
		// A missed snapshot only lengthens a future recovery.
		e.log.Warn("snapshot not stored", "escrow", en.snap.EscrowId, "nonce", en.s.Nonce(), "err", err)
	}
}

// signState signs root at nonce for every slot the host holds (one
// signature: the signed bytes name no slot), and returns the signatures
// with their stored form.
func (e *Engine) signState(en *entry, nonce uint64, root [32]byte) ([]*sessionpb.StateSignature, []store.Signature, error) {
	sigs, err := session.SignStateSlots(e.cfg.Key, en.snap.EscrowId, nonce, root[:], en.slots)
	if err != nil {
		return nil, nil, err
	}
	rows := make([]store.Signature, 0, len(sigs))
	for _, ss := range sigs {
		row, err := store.NewSignature(ss)
		if err != nil {
			return nil, nil, err
		}
		rows = append(rows, row)
	}
	return sigs, rows, nil
}
