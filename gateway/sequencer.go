package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// sequencer orders and signs one escrow's diffs: it keeps the replica,
// assigns nonces, builds and signs each diff from its own starts and the
// members' pooled txs, writes it to the state file and hands it to the
// courier.
//
// mu serializes sequencing: a diff is built, stored and applied before the
// next one is built. Delivery is pipelined: the courier sends the diffs in
// order while mu is free for the next one, and a request waits only for
// its executor. mu is taken before the locks of the parts the sequencer
// calls (courier, signatures, intake); none of them calls back into it.
type sequencer struct {
	snap    *sessionpb.EscrowSnapshot
	key     *signing.PrivKey
	state   *State
	out     *courier
	sigs    *signatures
	in      *intake
	log     *slog.Logger
	metrics *Metrics
	// low is told, from a goroutine of its own, that a stored start left
	// the balance under lowWater: the gateway retires the escrow.
	low func()

	mu       sync.Mutex
	replica  *session.Session
	settling bool               // set once settlement began: no new requests
	pending  map[string]*pooled // verified host txs to carry, by session.TxEffectKey
	lastDiff time.Time
	// unwritten is a diff its executor has but whose write failed: the
	// next step stores it before building anything (writeUnwritten).
	unwritten *written
	// tailUnknown is set on a sequencer restored from the state file: the
	// diff after the stored ones may be with its executor (adoptTail).
	tailUnknown bool
}

func (q *sequencer) id() uint64 { return q.snap.EscrowId }

// executorMember is the member that executes inference id. Call with mu
// held.
func (q *sequencer) executorMember(id uint64) int {
	return q.out.memberOf(q.replica.Executor(id))
}

// executorOf is executorMember for a caller without mu.
func (q *sequencer) executorOf(id uint64) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.executorMember(id)
}

// stopTaking refuses new requests from now on, and reports whether this
// call did (false: settlement had begun).
func (q *sequencer) stopTaking() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	was := q.settling
	q.settling = true
	return !was
}

// phase is the replica's phase.
func (q *sequencer) phase() sessionpb.Phase {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.replica.Phase()
}

// nonce is the latest sequenced nonce.
func (q *sequencer) nonce() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.replica.Nonce()
}

// settlement is the replica's settlement of its latest diff, with no
// signatures yet.
func (q *sequencer) settlement() *sessionpb.Settlement {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.replica.Settlement()
}

// openRecords counts the inferences still waiting for an executor's
// answer or a timeout.
func (q *sequencer) openRecords() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, r := range q.replica.State().Live {
		if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING || r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED {
			n++
		}
	}
	return n
}

// quiet reports whether the session takes diffs and none was sequenced
// for idle. Call with mu held.
func (q *sequencer) quiet(idle time.Duration) bool {
	return !q.settling && q.replica.Phase() != sessionpb.Phase_PHASE_SETTLEMENT && time.Since(q.lastDiff) >= idle
}

// flush carries the pooled txs in a diff if the session has been quiet
// for idle: finishes of the last requests, validations and timeout votes.
func (q *sequencer) flush(ctx context.Context, idle time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.quiet(idle) {
		return
	}
	if err := q.carryPooledLocked(ctx); err != nil {
		q.log.Warn("flush", "escrow", q.id(), "err", err)
	}
}

// isQuiet is quiet for a caller without mu.
func (q *sequencer) isQuiet(idle time.Duration) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.quiet(idle)
}

// carryPooled steps if any pooled tx may still apply.
func (q *sequencer) carryPooled(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.carryPooledLocked(ctx)
}

func (q *sequencer) carryPooledLocked(ctx context.Context) error {
	if len(q.carry()) == 0 {
		return nil
	}
	_, err := q.stepLocked(ctx, false)
	return err
}

// step builds the next diff from the pooled txs and, if finalize, a
// FinalizeRound; stores it; applies it to the replica; and queues it for
// every member. Pooled txs that no longer apply are dropped rather than
// failing the diff. The returned delivery reports each member's answer. A
// diff that starts an inference goes through start.
func (q *sequencer) step(ctx context.Context, finalize bool) (*delivery, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stepLocked(ctx, finalize)
}

// stepLocked is step for a caller holding mu.
func (q *sequencer) stepLocked(ctx context.Context, finalize bool) (*delivery, error) {
	w, err := q.prepare(ctx, nil, nil, finalize)
	if err != nil {
		return nil, err
	}
	if err := q.store(ctx, w); err != nil {
		return nil, err
	}
	return w.sent, nil
}

// prepareStart builds the diff that starts an inference: starts and reqs,
// its payloads, and sends it to its executor. The diff goes to its
// executor while the gateway writes it, not after: the executor checks
// it, and the app waits for that, while the write lands. The replica
// takes the diff, and the other members see it, only once it is stored
// (store); so a diff not yet stored is known to its executor alone, and a
// restart asks that host for it (adoptTail). Call with mu held.
func (q *sequencer) prepareStart(ctx context.Context, starts []*sessionpb.Tx, reqs map[uint64]executor.Request) (*written, error) {
	w, err := q.prepare(ctx, starts, reqs, false)
	if err != nil {
		return nil, err
	}
	w.exec = q.executorMember(w.diff.Nonce)
	q.sigs.expect(w.diff.Nonce, w.diff.PostStateRoot)
	// The executor's delivery, just started, takes this thread until its
	// request is on the wire; the write comes after it.
	q.out.sendFirst(w.exec, w.sent)
	return w, nil
}

// storeStart stores w, a start that prepareStart sent to its executor,
// and reports the outcome on stored. Call with mu held.
func (q *sequencer) storeStart(ctx context.Context, w *written, stored chan<- error) {
	began := time.Now()
	err := q.store(ctx, w)
	q.metrics.phase(PhaseStore, began)
	if err == nil && q.replica.Balance()*100 < q.snap.Amount*lowWater {
		q.log.Info("escrow running low; the next request opens a new one", "escrow", q.id(), "balance", q.replica.Balance())
		go q.low()
	}
	stored <- err
}

// prepare brings the replica up to the last diff sent (catchUp), then
// builds and signs the next diff, ready to store. Call with mu held.
func (q *sequencer) prepare(ctx context.Context, starts []*sessionpb.Tx, reqs map[uint64]executor.Request, finalize bool) (*written, error) {
	if err := q.catchUp(ctx); err != nil {
		return nil, err
	}
	d, p, err := q.build(starts, finalize)
	if err != nil {
		return nil, err
	}
	raw, err := d.Marshal()
	if err != nil {
		return nil, err
	}
	var root [32]byte
	copy(root[:], d.PostStateRoot)
	return &written{diff: d, pending: p, stored: StoredDiff{Nonce: d.Nonce, Data: raw, Requests: reqs},
		sent: q.out.newDelivery(d.Nonce, root, raw, reqs), exec: -1, urgent: finalize}, nil
}

// store writes w and publishes it. A write that fails leaves w unwritten,
// to be written before anything else is built (writeUnwritten). The write
// is not cut short when the request that asked for it ends: an
// interrupted commit may still land, unknown to the sequencer. Call with
// mu held.
func (q *sequencer) store(ctx context.Context, w *written) error {
	if err := q.state.PutDiff(context.WithoutCancel(ctx), q.id(), w.stored); err != nil {
		if err := q.reconcile(ctx, w.diff.Nonce, w.stored.Data, err); err != nil {
			// Its executor may have it, or the write may yet prove to
			// have landed: the nonce is taken either way.
			q.unwritten = w
			return err
		}
	}
	return q.publish(w)
}

// written is a diff on its way to the state file; its executor, if it
// starts an inference, has it already.
type written struct {
	diff    *sessionpb.Diff
	pending *session.Pending // the replica's side of it, committed once stored
	stored  StoredDiff
	sent    *delivery
	exec    int  // the member sent the diff before the write, or -1
	urgent  bool // the other members take it at once, not held
}

// publish applies w, now stored, to the replica and queues it for the
// members that do not have it yet. Call with mu held.
func (q *sequencer) publish(w *written) error {
	if err := w.pending.Commit(); err != nil {
		return fmt.Errorf("gateway replica could not take its own diff %d: %w", w.diff.Nonce, err)
	}
	q.advanced(w.diff)
	q.out.sendRest(w.sent, w.exec, w.urgent)
	return nil
}

// writeUnwritten stores the diff whose write failed, if there is one, and
// publishes it. Its executor may have it, so no other diff may take its
// nonce: until it is stored, nothing is sequenced. Call with mu held.
func (q *sequencer) writeUnwritten(ctx context.Context) error {
	w := q.unwritten
	if w == nil {
		return nil
	}
	if err := q.state.PutDiff(context.WithoutCancel(ctx), q.id(), w.stored); err != nil {
		if err := q.reconcile(ctx, w.diff.Nonce, w.stored.Data, err); err != nil {
			return fmt.Errorf("an earlier diff is still not stored, and nothing is sequenced until it is: %w", err)
		}
	}
	q.unwritten = nil
	q.log.Info("stored a diff whose first write failed", "escrow", q.id(), "nonce", w.diff.Nonce)
	return q.publish(w)
}

// catchUp brings the replica to the last diff sent to any host: the diff
// a restart may have left with its executor alone (adoptTail), then the
// diff whose write failed (writeUnwritten). Call with mu held.
func (q *sequencer) catchUp(ctx context.Context) error {
	if err := q.adoptTailLocked(ctx); err != nil {
		return err
	}
	return q.writeUnwritten(ctx)
}

// adoptTail, on a sequencer restored from the state file, asks the host
// that executes the next nonce whether it holds a diff there: the gateway
// may have stopped between sending it a start and storing it (start). If
// it does, and the diff is this gateway's and applies, it is stored and
// applied here, and sent to the other members. Until that host has
// answered, nothing is sequenced: a new diff at that nonce would fork the
// session.
func (q *sequencer) adoptTail(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.adoptTailLocked(ctx)
}

// adoptTailLocked is adoptTail for a caller holding mu.
func (q *sequencer) adoptTailLocked(ctx context.Context) error {
	if !q.tailUnknown {
		return nil
	}
	next := q.replica.Nonce() + 1
	exec := q.executorMember(next)
	e := q.out.members[exec]
	raw, held, err := q.out.heldAt(ctx, exec, next)
	if err != nil {
		return fmt.Errorf("escrow %d: diff %d may be with its executor %s, which did not answer (%w); nothing is sequenced until it does", q.id(), next, e.url, err)
	}
	if !held {
		q.tailUnknown = false
		return nil
	}
	d, err := session.DecodeDiff(raw)
	if err != nil {
		return fmt.Errorf("escrow %d: host %s holds a diff %d that does not decode: %w", q.id(), e.url, next, err)
	}
	p, err := q.replica.Prepare(d) // this gateway's signature, and its root
	if err != nil {
		return fmt.Errorf("escrow %d: host %s holds a diff %d that this gateway's state does not take: %w", q.id(), e.url, next, err)
	}
	var root [32]byte
	copy(root[:], d.PostStateRoot)
	w := &written{diff: d, pending: p, stored: StoredDiff{Nonce: next, Data: raw},
		sent: q.out.newDelivery(next, root, raw, nil), exec: -1}
	if err := q.state.PutDiff(context.WithoutCancel(ctx), q.id(), w.stored); err != nil {
		return fmt.Errorf("escrow %d: storing diff %d taken back from its executor: %w", q.id(), next, err)
	}
	q.tailUnknown = false
	q.log.Warn("took back a diff its executor held but the state file did not", "escrow", q.id(), "nonce", next, "host", e.url)
	return q.publish(w)
}

// advanced does the sequencer's bookkeeping for diff d, just applied to
// the replica. Call with mu held.
func (q *sequencer) advanced(d *sessionpb.Diff) {
	for _, tx := range d.Txs {
		q.forget(session.TxEffectKey(tx))
	}
	q.sigs.expect(d.Nonce, d.PostStateRoot)
	q.lastDiff = time.Now()
	q.metrics.diffs.Inc()
	q.metrics.carried(d, q.in.slots)
}

// reconcile settles a diff write that reported werr. A write can fail after
// its commit landed (an interrupted or lost answer), so the state file at
// nonce is the truth: the same bytes there mean the write succeeded;
// nothing there means it failed, and werr stands. Other bytes cannot come
// from this sequencer, which writes a failed diff again before building
// another (writeUnwritten); they mean the file changed behind it.
func (q *sequencer) reconcile(ctx context.Context, nonce uint64, raw []byte, werr error) error {
	back, err := q.state.Diffs(context.WithoutCancel(ctx), q.id(), nonce, 1)
	if err != nil {
		return fmt.Errorf("diff %d of escrow %d: the write failed (%v) and the state file could not be read back: %w", nonce, q.id(), werr, err)
	}
	if len(back) == 0 || back[0].Nonce != nonce {
		return fmt.Errorf("diff %d of escrow %d not stored: %w", nonce, q.id(), werr)
	}
	if !bytes.Equal(back[0].Data, raw) {
		return fmt.Errorf("diff %d of escrow %d: the state file holds another diff at that nonce, written behind this gateway's back (%v)", nonce, q.id(), werr)
	}
	q.log.Warn("a diff write reported an error but landed", "escrow", q.id(), "nonce", nonce, "err", werr)
	return nil
}

// build assembles the next diff, fills in its root and signs it. Call
// with mu held.
func (q *sequencer) build(starts []*sessionpb.Tx, finalize bool) (*sessionpb.Diff, *session.Pending, error) {
	carried := q.carry()
	room := session.MaxTxsPerDiff - len(starts)
	if finalize {
		room--
	}
	if len(carried) > room {
		carried = carried[:max(room, 0)] // the rest waits for the next diff
	}
	d, p, err := assemble(starts, carried, finalize, func(txs []*sessionpb.Tx) (*sessionpb.Diff, *session.Pending, error) {
		d := &sessionpb.Diff{EscrowId: q.id(), Nonce: q.replica.Nonce() + 1, Txs: txs}
		p, err := q.replica.Sequence(d)
		return d, p, err
	}, func(bad *sessionpb.Tx, err error) {
		q.forget(session.TxEffectKey(bad))
		q.log.Warn("dropped a pooled tx that does not apply", "escrow", q.id(), "err", err)
	})
	if err != nil {
		return nil, nil, err
	}
	if err := session.SignDiff(q.key, q.snap.ChainId, d); err != nil {
		return nil, nil, err
	}
	return d, p, nil
}

// assemble puts starts, then carried, then (if finalize) a FinalizeRound
// into one diff and has sequence check it. Pooled txs are verified and
// state-checked on intake, and one per effect is kept, so a carried tx
// fails only when an earlier tx of the same diff moved its record on (a
// vote after the one that resolved it, and with a large group there may be
// many such votes): drop is told of it, it leaves the diff, and the diff is
// built again. Each retry removes one carried tx, so there are at most as
// many retries as carried txs. An error in a start, the finalize or
// outside the diff's txs is returned as it is.
func assemble(starts, carried []*sessionpb.Tx, finalize bool,
	sequence func([]*sessionpb.Tx) (*sessionpb.Diff, *session.Pending, error),
	drop func(*sessionpb.Tx, error),
) (*sessionpb.Diff, *session.Pending, error) {
	carried = slices.Clone(carried)
	for {
		txs := append(append(make([]*sessionpb.Tx, 0, len(starts)+len(carried)+1), starts...), carried...)
		if finalize {
			txs = append(txs, &sessionpb.Tx{Body: &sessionpb.Tx_Finalize{Finalize: &sessionpb.FinalizeRound{}}})
		}
		d, p, err := sequence(txs)
		if err == nil {
			return d, p, nil
		}
		var de *session.DiffError
		if !errors.As(err, &de) || de.Tx < len(starts) || de.Tx >= len(starts)+len(carried) {
			return nil, nil, err
		}
		i := de.Tx - len(starts)
		drop(carried[i], err)
		carried = slices.Delete(carried, i, i+1)
	}
}

// carry lists the pooled txs that may still apply, in a fixed order
// (confirms and finishes first: the kind leads the key), and forgets the
// others. The members' txs that arrived since the last call join the pool
// first. Call with mu held.
func (q *sequencer) carry() []*sessionpb.Tx {
	q.in.drainInto(q.pending, q.replica)
	keys := make([]string, 0, len(q.pending))
	for k, p := range q.pending {
		if !q.replica.MayInclude(p.tx) {
			q.forget(k)
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*sessionpb.Tx, 0, len(keys))
	for _, k := range keys {
		out = append(out, q.pending[k].tx)
	}
	return out
}

// forget removes the tx with effect key k from the pool. Call with mu
// held.
func (q *sequencer) forget(k string) {
	p, ok := q.pending[k]
	if !ok {
		return
	}
	delete(q.pending, k)
	q.in.release(p)
}
