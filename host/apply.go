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

// DiffItem is one diff of a delivery: the marshalled sessionpb.Diff and
// the payloads of the inferences it starts, keyed by inference id.
type DiffItem struct {
	Raw      []byte
	Requests map[uint64]executor.Request
}

// ApplyDiff verifies a diff through the protocol package, persists it, and
// only then publishes it and signs the new root. Requests carries the
// payloads of inferences the diff starts, keyed by inference id; the
// executor needs them to run, validators to re-run. A replay of a stored
// diff (the same signed content, session.SameDiff) answers as the first
// time did; another diff at a stored nonce is a fork.
func (e *Engine) ApplyDiff(ctx context.Context, escrowID uint64, raw []byte, requests map[uint64]executor.Request) (*DiffReply, error) {
	return e.ApplyDiffs(ctx, escrowID, []DiffItem{{Raw: raw, Requests: requests}})
}

// ApplyDiffs applies consecutive diffs of one escrow, in order, and
// persists them in one durable commit; the reply is the last one's, and
// only the last root is signed. A gateway sends a member the diffs it does
// not execute this way, so the member pays one commit and one signature
// for several nonces.
//
// The run is staged on the session (session.Run) and becomes part of it
// only once stored, so memory never runs ahead of disk: if the store
// fails, the session is still at its last stored nonce and the same
// delivery can be retried. If a later diff of the run is refused, the ones
// before it are still stored (unsigned) and the refusal is returned.
func (e *Engine) ApplyDiffs(ctx context.Context, escrowID uint64, items []DiffItem) (*DiffReply, error) {
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: no diff to apply", ErrBadInput)
	}
	ds := make([]*sessionpb.Diff, len(items))
	for i, it := range items {
		// Only the canonical encoding is taken, so what is stored is what
		// any other copy of the diff would be (session.DecodeDiff).
		d, err := session.DecodeDiff(it.Raw)
		if err != nil {
			e.cfg.Metrics.reject(decodeReject(err))
			if len(items) == 1 {
				return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
			}
			return nil, fmt.Errorf("%w: diff %d of the delivery: %w", ErrBadInput, i, err)
		}
		if d.EscrowId != escrowID {
			e.cfg.Metrics.reject(string(session.ReasonEscrow))
			return nil, fmt.Errorf("%w: diff is for escrow %d, posted to escrow %d", ErrBadInput, d.EscrowId, escrowID)
		}
		if i > 0 && d.Nonce != ds[i-1].Nonce+1 {
			e.cfg.Metrics.reject("order")
			return nil, fmt.Errorf("%w: the delivery's diffs must have consecutive nonces; nonce %d follows %d", ErrBadInput, d.Nonce, ds[i-1].Nonce)
		}
		ds[i] = d
	}
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return nil, err
	}
	defer en.mu.Unlock()

	// Diffs this host already has are replays: the same bytes, or a fork.
	var reply *DiffReply
	for len(ds) > 0 && ds[0].Nonce != 0 && ds[0].Nonce <= en.s.Nonce() {
		if reply, err = e.replay(ctx, en, ds[0], items[0].Raw); err != nil {
			return nil, err
		}
		if err := e.replayPayloads(en, ds[0], items[0].Requests); err != nil {
			return nil, err
		}
		ds, items = ds[1:], items[1:]
	}
	if len(ds) == 0 {
		return reply, nil
	}
	return e.applyRun(ctx, en, ds, items)
}

// applyRun applies ds (items' decoded diffs, starting at the next nonce).
// Call with en.mu held.
func (e *Engine) applyRun(ctx context.Context, en *entry, ds []*sessionpb.Diff, items []DiffItem) (*DiffReply, error) {
	escrowID := en.snap.EscrowId
	timer := e.cfg.Metrics.applyTimer()
	var (
		staged  = en.s.NewRun()
		rows    = make([]store.Diff, 0, len(ds))
		results = make([]*session.Result, 0, len(ds))
		ahead   []*run
		last    *session.Pending // the run's last diff, when every diff of the run was taken
		refused error            // why diff len(rows) was refused, if one was
	)
	for i, d := range ds {
		if refused = e.check(d, items[i].Requests); refused != nil {
			break
		}
		p, err := staged.Prepare(d)
		if err != nil {
			var de *session.DiffError
			if errors.As(err, &de) {
				e.cfg.Metrics.reject(string(de.Reason))
			}
			refused = err
			break
		}
		res := p.Result()
		// The inferences this host executes start now, beside the signing
		// and the durable write. Their streams may answer before the write
		// ends; their txs are pooled only once it has (run.go). A diff that
		// is not stored stops its runs.
		ahead = append(ahead, e.runAhead(en, ds[:i+1], p, items[i].Requests)...)
		row, err := diffRow(escrowID, d, res, items[i].Raw)
		if err != nil {
			return nil, err
		}
		rows, results = append(rows, row), append(results, res)
		if i == len(ds)-1 {
			last = p
		}
	}
	if len(rows) == 0 {
		return nil, refused
	}
	taken := ds[:len(rows)]
	stored := false
	defer func() {
		for _, r := range ahead {
			if stored {
				r.stored = true
			} else {
				e.runs.drop(runKey{escrowID, r.nonce})
				delete(en.ran, r.nonce)
			}
		}
	}()
	if len(ahead) > 0 {
		// Let the run (the goroutine just started, next in line on this
		// thread) sign its ConfirmStart and stream first: the app waits
		// for it, while the state signature and the durable write below
		// wait only for this diff's reply.
		runtime.Gosched()
	}
	top := &rows[len(rows)-1]
	// The new state's signatures, or why they are withheld, are decided
	// now, so that they are stored with the diff in one durable commit. A
	// run cut short by a refused diff is stored unsigned.
	var withheld string
	var sigs []*sessionpb.StateSignature
	if last != nil {
		withheld = en.pool.overdue(top.Nonce, en.snap.SealGraceNonces, func(key string, tx *sessionpb.Tx) bool {
			return !carried(taken, key) && last.CheckHostTx(tx) == nil
		})
		if withheld == "" {
			var err error
			if sigs, top.Signatures, err = e.signState(en, top.Nonce, results[len(rows)-1].Root); err != nil {
				return nil, err
			}
		}
	}
	// Persist first: if the store fails, the staged run is dropped and
	// memory stays where disk is.
	if err := e.cfg.Store.AppendDiffs(ctx, rows); err != nil {
		e.cfg.Metrics.storageError()
		return nil, fmt.Errorf("diffs %d to %d of escrow %d not stored: %w", rows[0].Nonce, top.Nonce, escrowID, err)
	}
	e.cfg.Metrics.storageOK()
	stored = true
	if err := staged.Commit(); err != nil {
		// Cannot happen under en.mu. Disk is now ahead of memory: the
		// session is recovered from storage on its next use.
		e.evict(en)
		return nil, err
	}
	for i, d := range taken {
		e.took(ctx, en, d, results[i], items[i].Requests)
	}
	en.nonce.Store(en.s.Nonce())
	e.runs.poke()
	timer()
	if e.snapshotDue(en, rows) {
		e.snapshot(ctx, en)
	}
	if refused != nil {
		return nil, refused
	}
	reply := &DiffReply{Nonce: top.Nonce, Signatures: sigs, Withheld: withheld, Mempool: en.pool.txs()}
	copy(reply.Root[:], top.Root)
	if withheld != "" {
		e.cfg.Metrics.withheld()
	}
	return reply, nil
}

// check ties each payload to its StartInference in d.
func (e *Engine) check(d *sessionpb.Diff, requests map[uint64]executor.Request) error {
	for id, req := range requests {
		if err := checkRequest(d, id, req); err != nil {
			e.cfg.Metrics.reject("request")
			return err
		}
	}
	return nil
}

// decodeReject is the reject metric's label for a diff that does not decode.
func decodeReject(err error) string {
	if errors.Is(err, session.ReasonEncoding) {
		return string(session.ReasonEncoding)
	}
	return "decode"
}

// diffRow is d's stored form, with the records its apply sealed.
func diffRow(escrowID uint64, d *sessionpb.Diff, res *session.Result, raw []byte) (store.Diff, error) {
	rows := make([]store.Sealed, 0, len(res.Sealed))
	for _, r := range res.Sealed {
		b, err := r.Marshal()
		if err != nil {
			return store.Diff{}, err
		}
		rows = append(rows, store.Sealed{EscrowID: escrowID, InferenceID: r.Id, Nonce: d.Nonce, Record: b})
	}
	return store.Diff{EscrowID: escrowID, Nonce: d.Nonce, Root: res.Root[:], Data: raw, Sealed: rows}, nil
}

// took does what a diff now applied in memory calls for: its payloads are
// kept, and its txs and sealed records tidied out of the host's books.
func (e *Engine) took(ctx context.Context, en *entry, d *sessionpb.Diff, res *session.Result, requests map[uint64]executor.Request) {
	e.cfg.Metrics.applied(en.s.Phase())
	for id, req := range requests {
		en.requests[id] = req
	}
	e.afterApply(ctx, en, d, res)
}

// snapshotDue reports whether the stored run rows reached a snapshot
// nonce, or the session reached settlement.
func (e *Engine) snapshotDue(en *entry, rows []store.Diff) bool {
	if en.s.Phase() == sessionpb.Phase_PHASE_SETTLEMENT {
		return true
	}
	for _, r := range rows {
		if r.Nonce%e.cfg.SnapshotEvery == 0 {
			return true
		}
	}
	return false
}

// runAhead starts the inferences of d, the last of ds, that this host
// executes and has the payloads of, and returns their runs. ds are the
// diffs of the delivery staged so far, on the session's state; p is d's
// staged diff (nil for a replay of a stored d, when ds is d alone). Call
// with en.mu held. None starts while the host's own txs are overdue: the
// gateway's inference request is then refused (Inference).
func (e *Engine) runAhead(en *entry, ds []*sessionpb.Diff, p *session.Pending, requests map[uint64]executor.Request) []*run {
	d := ds[len(ds)-1]
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
		if en.pool.overdueOwn(d.Nonce, en.snap.SealGraceNonces, func(key string, tx *sessionpb.Tx) bool {
			if p == nil { // a replay: the session is at d already
				return en.s.CheckHostTx(tx) == nil
			}
			return !carried(ds, key) && p.CheckHostTx(tx) == nil
		}) != "" {
			continue
		}
		out = append(out, e.startRun(en, st.InferenceId, slot, req))
		en.ran[st.InferenceId] = true
	}
	return out
}

// carried reports whether one of ds carries the tx with key.
func carried(ds []*sessionpb.Diff, key string) bool {
	for _, d := range ds {
		for _, tx := range d.Txs {
			if session.TxKey(tx) == key {
				return true
			}
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

// replay answers a diff at an already applied nonce: the same diff
// (session.SameDiff) gets the stored answer again, anything else is a fork.
func (e *Engine) replay(ctx context.Context, en *entry, d *sessionpb.Diff, raw []byte) (*DiffReply, error) {
	stored, err := e.cfg.Store.Diffs(ctx, d.EscrowId, d.Nonce, 1)
	if err != nil {
		return nil, err
	}
	if len(stored) == 0 || stored[0].Nonce != d.Nonce {
		return nil, fmt.Errorf("diff %d of escrow %d is applied but not stored", d.Nonce, d.EscrowId)
	}
	// The same signed content is the same diff, whatever its signature
	// bytes: anyone who re-signs a tx of it, or posts it first, must not
	// make the gateway's copy a fork. The stored copy is decoded as it is
	// (it passed apply), so a host that stored a tampered encoding before
	// the decoders were canonical still takes the genuine diff.
	var prev sessionpb.Diff
	if err := prev.Unmarshal(stored[0].Data); err != nil || !session.SameDiff(&prev, d) {
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
	if len(sigs) == 0 && d.Nonce == en.s.Nonce() {
		// The latest diff came inside a longer delivery, which signed only
		// its last root, or its run was cut short: it is stored, so sign
		// it now, unless a pooled tx is overdue.
		if reply.Withheld = en.pool.overdue(d.Nonce, en.snap.SealGraceNonces, func(_ string, tx *sessionpb.Tx) bool { return en.s.CheckHostTx(tx) == nil }); reply.Withheld != "" {
			e.cfg.Metrics.withheld()
			return reply, nil
		}
		ss, rows, err := e.signState(en, d.Nonce, reply.Root)
		if err != nil {
			return nil, err
		}
		for _, row := range rows {
			if err := e.cfg.Store.PutSignature(ctx, row); err != nil {
				return nil, err
			}
		}
		reply.Signatures = ss
	}
	return reply, nil
}

// replayPayloads keeps the payloads that come with a replay of stored
// diff d, and starts the runs this host executes and has not run. Anyone
// may deliver a diff first: an executor that re-posts its diff to a peer
// without the payloads must not make the gateway's delivery, then a
// replay, lose them, or no peer could validate its work. A payload is
// kept when it matches the prompt hash and max tokens d (the same bytes
// as the stored diff) commits to, whoever delivers it, and its inference
// is still live. Call with en.mu held.
func (e *Engine) replayPayloads(en *entry, d *sessionpb.Diff, requests map[uint64]executor.Request) error {
	if len(requests) == 0 {
		return nil
	}
	if err := e.check(d, requests); err != nil {
		return err
	}
	pending := map[uint64]executor.Request{}
	for id, req := range requests {
		r, ok := en.s.Record(id)
		if !ok {
			continue // sealed: no one validates it any more
		}
		if _, have := en.requests[id]; !have {
			en.requests[id] = req
		}
		if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING {
			pending[id] = req
		}
	}
	for _, r := range e.runAhead(en, []*sessionpb.Diff{d}, nil, pending) {
		r.stored = true // the diff is stored already
	}
	return nil
}

// afterApply does what a new state calls for: mempool upkeep and
// validation of peers' finished work.
func (e *Engine) afterApply(ctx context.Context, en *entry, d *sessionpb.Diff, res *session.Result) {
	s := en.s
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
			e.maybeValidate(ctx, en, f)
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
	sigs, err := session.SignStateSlots(e.cfg.Key, en.snap.ChainId, en.snap.EscrowId, nonce, root[:], en.slots)
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
