package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// member is one distinct participant of an escrow's group.
type member struct {
	addr  signing.Address
	url   string
	slots []uint32
	out   outbox
}

// outbox is a member's queue of diffs to deliver, in nonce order. One
// goroutine drains it while it is not empty, sending everything queued as
// one run, so a member sees nonces in order while the members are served
// independently of each other.
//
// Diffs the member does not execute are held (Config.HoldFor): they go
// out with the next diff it executes, or when maxHeld are waiting, or
// when the hold ends, so that the member stores and signs several nonces
// in one commit. Every process of the network shares the machine's cores:
// each commit, signature and round trip a member saves is time the
// executor of the current request gets.
type outbox struct {
	mu       sync.Mutex
	queue    []*delivery
	running  bool
	urgentTo uint64      // queued diffs up to this nonce go out now
	hold     *time.Timer // armed while held diffs wait
}

// ready reports whether the queue goes out now, with at most held diffs
// held. Call with mu held.
func (o *outbox) ready(held int) bool {
	return len(o.queue) > 0 && (o.queue[0].nonce <= o.urgentTo || len(o.queue) >= held)
}

// maxHeld is how many diffs may wait for a member before they go out.
const maxHeld = 16

// holdFor is how long diffs may wait for a member of this escrow:
// Config.HoldFor, and at most a quarter of the seal grace's seconds.
func (q *sequencer) holdFor() time.Duration {
	if g := q.snap.SealGraceSeconds; g > 0 {
		return min(q.g.cfg.HoldFor, time.Duration(g)*time.Second/4)
	}
	return q.g.cfg.HoldFor
}

// held is how many diffs may wait for a member of this escrow: maxHeld,
// and at most a quarter of the seal grace, so that a member sampled to
// validate a finished inference sees it well before it seals.
func (q *sequencer) held() int {
	return int(max(min(maxHeld, q.snap.SealGraceNonces/4), 1))
}

// delivery is one diff on its way to every member.
type delivery struct {
	nonce uint64
	root  [32]byte
	raw   []byte
	reqs  map[uint64]executor.Request
	done  []chan error // per member, buffered: its outcome, nil once it took the diff

	encode  sync.Once // body is encoded once, for every member
	body    []byte
	bodyErr error
}

// encoded is d's request body, the same for every member.
func (d *delivery) encoded() ([]byte, error) {
	d.encode.Do(func() { d.body, d.bodyErr = diffBody(d.raw, d.reqs) })
	return d.body, d.bodyErr
}

// wait returns member i's outcome, or ctx's error first.
func (d *delivery) wait(ctx context.Context, i int) error {
	select {
	case err := <-d.done[i]:
		d.done[i] <- err // kept for another waiter
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitAll waits until every member answered, or ctx ends.
func (d *delivery) waitAll(ctx context.Context) {
	for i := range d.done {
		if d.wait(ctx, i) != nil && ctx.Err() != nil {
			return
		}
	}
}

// errSkipped answers a delivery to a member that is known to be down; it
// catches up on its first delivery after that.
var errSkipped = errors.New("host skipped while down")

// sequencer is the gateway's side of one escrow's session: it keeps the
// replica, assigns nonces, builds and signs diffs from its own starts and
// the hosts' pooled txs, and sends every diff to every member in order.
//
// mu serializes sequencing: a diff is built, stored and applied before the
// next one is built. Delivery is pipelined: each member's outbox sends the
// diffs in order while mu is free for the next one, and a request waits
// only for its executor. The members' answers are kept under net, which
// the outboxes take and mu holders may take after mu (never the reverse).
type sequencer struct {
	g       *Gateway
	snap    *sessionpb.EscrowSnapshot
	members []*member

	settleMu sync.Mutex // held through a whole settle

	mu       sync.Mutex
	replica  *session.Session
	status   EscrowStatus
	settling bool               // set once settlement began: no new requests
	pending  map[string]*pooled // verified host txs to carry, by session.TxEffectKey
	lastDiff time.Time
	// unwritten is a diff its executor has but whose write failed: the
	// next step stores it before building anything (writeUnwritten).
	unwritten *written
	// tailUnknown is set on a sequencer restored from the state file: the
	// diff after the stored ones may be with its executor (adoptTail).
	tailUnknown bool

	net      sync.Mutex
	acked    map[int]uint64                       // member index -> highest nonce it accepted
	down     map[int]time.Time                    // member index -> not tried before this time
	sigNonce uint64                               // the latest sequenced nonce: sigs are over its root
	sigs     map[uint32]*sessionpb.StateSignature // state signatures at sigNonce, by slot
	inbox    []*pooled                            // members' verified txs, not yet in pending
	known    map[string]bool                      // effect keys in inbox or pending
	waiting  []int                                // member index -> its txs in inbox or pending
}

// pooled is a verified host tx waiting to be carried, and the member that
// sent it first.
type pooled struct {
	tx   *sessionpb.Tx
	key  string // session.TxEffectKey
	from int
}

// maxPendingPerHost bounds the txs one member may have waiting to be
// carried: a quarter of what one diff carries, so no member can fill a
// diff, and a few together cannot keep the others' txs out for long. A tx
// over the cap is dropped and counted; an honest host answers every diff
// with its whole mempool, so one it dropped comes back once the pool has
// room. Honest hosts stay far below it: their txs are carried by the next
// diff.
const maxPendingPerHost = session.MaxTxsPerDiff / 4

// downFor is how long an unreachable host is skipped; it catches up on the
// first diff after that.
const downFor = 3 * time.Second

func (q *sequencer) id() uint64 { return q.snap.EscrowId }

// executorMember is the member that executes inference id.
func (q *sequencer) executorMember(id uint64) int {
	slot := q.replica.Executor(id)
	for i, m := range q.members {
		for _, s := range m.slots {
			if s == slot {
				return i
			}
		}
	}
	return -1 // cannot happen: every slot has a member
}

// isDown reports whether member i is being skipped. It takes net.
func (q *sequencer) isDown(i int, now time.Time) bool {
	q.net.Lock()
	defer q.net.Unlock()
	return q.downLocked(i, now)
}

func (q *sequencer) downLocked(i int, now time.Time) bool {
	until, ok := q.down[i]
	return ok && now.Before(until)
}

// step builds the next diff from the pooled txs and, if finalize, a
// FinalizeRound; stores it; applies it to the replica; and queues it for
// every member. Call with mu held. Pooled txs that no longer apply are
// dropped rather than failing the diff. The returned delivery reports each
// member's answer. A diff that starts an inference goes through startStep.
func (q *sequencer) step(ctx context.Context, finalize bool) (*delivery, error) {
	w, err := q.prepare(ctx, nil, nil, finalize)
	if err != nil {
		return nil, err
	}
	if err := q.store(ctx, w); err != nil {
		return nil, err
	}
	return w.sent, nil
}

// startStep is step for the diff that starts an inference: starts and
// reqs, its payloads. The diff goes to its executor while the gateway
// writes it, not after: the executor checks it, and the app waits for
// that, while the write lands. The replica takes the diff, and the other
// members see it, only once it is stored; so a diff not yet stored is
// known to its executor alone, and a restart asks that host for it
// (adoptTail).
//
// Call with mu held. On success startStep hands mu to the write: the
// write's goroutine unlocks it once the diff is stored and published, and
// then reports the outcome on stored. On error mu is still the caller's.
func (q *sequencer) startStep(ctx context.Context, starts []*sessionpb.Tx, reqs map[uint64]executor.Request) (*delivery, <-chan error, error) {
	w, err := q.prepare(ctx, starts, reqs, false)
	if err != nil {
		return nil, nil, err
	}
	w.exec = q.executorMember(w.diff.Nonce)
	q.expectSignatures(w.diff.Nonce)
	if q.enqueue(w.exec, w.sent, true) {
		// The executor's delivery, just started, takes this thread until
		// its request is on the wire; the write comes after it.
		runtime.Gosched()
	}
	stored := make(chan error, 1)
	go func() {
		defer q.mu.Unlock()
		began := time.Now()
		err := q.store(ctx, w)
		q.g.metrics.phase(PhaseStore, began)
		if err == nil && q.replica.Balance()*100 < q.snap.Amount*lowWater {
			q.g.log.Info("escrow running low; the next request opens a new one", "escrow", q.id(), "balance", q.replica.Balance())
			go q.g.retire(q)
		}
		stored <- err
	}()
	return w.sent, stored, nil
}

// prepare brings the replica up to the last diff sent (catchUp), then
// builds and signs the next diff, ready to store.
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
		sent: q.newDelivery(d.Nonce, root, raw, reqs), exec: -1, urgent: finalize}, nil
}

// store writes w and publishes it. A write that fails leaves w unwritten,
// to be written before anything else is built (writeUnwritten). The write
// is not cut short when the request that asked for it ends: an
// interrupted commit may still land, unknown to the sequencer. Call with
// mu held.
func (q *sequencer) store(ctx context.Context, w *written) error {
	if err := q.g.state.PutDiff(context.WithoutCancel(ctx), q.id(), w.stored); err != nil {
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
	q.sendRest(w.sent, w.exec, w.urgent)
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
	if err := q.g.state.PutDiff(context.WithoutCancel(ctx), q.id(), w.stored); err != nil {
		if err := q.reconcile(ctx, w.diff.Nonce, w.stored.Data, err); err != nil {
			return fmt.Errorf("an earlier diff is still not stored, and nothing is sequenced until it is: %w", err)
		}
	}
	q.unwritten = nil
	q.g.log.Info("stored a diff whose first write failed", "escrow", q.id(), "nonce", w.diff.Nonce)
	return q.publish(w)
}

// catchUp brings the replica to the last diff sent to any host: the diff
// a restart may have left with its executor alone (adoptTail), then the
// diff whose write failed (writeUnwritten). Call with mu held.
func (q *sequencer) catchUp(ctx context.Context) error {
	if err := q.adoptTail(ctx); err != nil {
		return err
	}
	return q.writeUnwritten(ctx)
}

// adoptTail, on a sequencer restored from the state file, asks the host
// that executes the next nonce whether it holds a diff there: the gateway
// may have stopped between sending it a start and storing it (step). If
// it does, and the diff is this gateway's and applies, it is stored and
// applied here, and sent to the other members. Until that host has
// answered, nothing is sequenced: a new diff at that nonce would fork the
// session. Call with mu held.
func (q *sequencer) adoptTail(ctx context.Context) error {
	if !q.tailUnknown {
		return nil
	}
	next := q.replica.Nonce() + 1
	e := q.members[q.executorMember(next)]
	askCx, cancel := context.WithTimeout(ctx, q.g.cfg.HostTimeout)
	defer cancel()
	held, err := q.g.peers.diffs(askCx, e.url, e.addr, q.id(), next, 1)
	for initializing(err) && askCx.Err() == nil {
		// A host that has just started answers once its storage is ready.
		select {
		case <-askCx.Done():
		case <-time.After(100 * time.Millisecond):
			held, err = q.g.peers.diffs(askCx, e.url, e.addr, q.id(), next, 1)
		}
	}
	if err != nil {
		return fmt.Errorf("escrow %d: diff %d may be with its executor %s, which did not answer (%w); nothing is sequenced until it does", q.id(), next, e.url, err)
	}
	if len(held) == 0 || held[0].Nonce != next {
		q.tailUnknown = false
		return nil
	}
	d, err := session.DecodeDiff(held[0].Data)
	if err != nil {
		return fmt.Errorf("escrow %d: host %s holds a diff %d that does not decode: %w", q.id(), e.url, next, err)
	}
	p, err := q.replica.Prepare(d) // this gateway's signature, and its root
	if err != nil {
		return fmt.Errorf("escrow %d: host %s holds a diff %d that this gateway's state does not take: %w", q.id(), e.url, next, err)
	}
	var root [32]byte
	copy(root[:], d.PostStateRoot)
	w := &written{diff: d, pending: p, stored: StoredDiff{Nonce: next, Data: held[0].Data},
		sent: q.newDelivery(next, root, held[0].Data, nil), exec: -1}
	if err := q.g.state.PutDiff(context.WithoutCancel(ctx), q.id(), w.stored); err != nil {
		return fmt.Errorf("escrow %d: storing diff %d taken back from its executor: %w", q.id(), next, err)
	}
	q.tailUnknown = false
	q.g.log.Warn("took back a diff its executor held but the state file did not", "escrow", q.id(), "nonce", next, "host", e.url)
	return q.publish(w)
}

// advanced does the sequencer's bookkeeping for diff d, just applied to
// the replica.
func (q *sequencer) advanced(d *sessionpb.Diff) {
	for _, tx := range d.Txs {
		q.forget(session.TxEffectKey(tx))
	}
	q.expectSignatures(d.Nonce)
	q.lastDiff = time.Now()
	q.g.metrics.diffs.Inc()
}

// expectSignatures makes nonce the one whose state signatures are kept.
func (q *sequencer) expectSignatures(nonce uint64) {
	q.net.Lock()
	if q.sigNonce != nonce {
		q.sigNonce = nonce
		clear(q.sigs)
	}
	q.net.Unlock()
}

// reconcile settles a diff write that reported werr. A write can fail after
// its commit landed (an interrupted or lost answer), so the state file at
// nonce is the truth: the same bytes there mean the write succeeded;
// nothing there means it failed, and werr stands. Other bytes cannot come
// from this sequencer, which writes a failed diff again before building
// another (writeUnwritten); they mean the file changed behind it.
func (q *sequencer) reconcile(ctx context.Context, nonce uint64, raw []byte, werr error) error {
	back, err := q.g.state.Diffs(context.WithoutCancel(ctx), q.id(), nonce, 1)
	if err != nil {
		return fmt.Errorf("diff %d of escrow %d: the write failed (%v) and the state file could not be read back: %w", nonce, q.id(), werr, err)
	}
	if len(back) == 0 || back[0].Nonce != nonce {
		return fmt.Errorf("diff %d of escrow %d not stored: %w", nonce, q.id(), werr)
	}
	if !bytes.Equal(back[0].Data, raw) {
		return fmt.Errorf("diff %d of escrow %d: the state file holds another diff at that nonce, written behind this gateway's back (%v)", nonce, q.id(), werr)
	}
	q.g.log.Warn("a diff write reported an error but landed", "escrow", q.id(), "nonce", nonce, "err", werr)
	return nil
}

// build assembles the next diff, fills in its root and signs it.
func (q *sequencer) build(starts []*sessionpb.Tx, finalize bool) (*sessionpb.Diff, *session.Pending, error) {
	carried := q.carry()
	room := session.MaxTxsPerDiff - len(starts)
	if finalize {
		room--
	}
	if len(carried) > room {
		carried = carried[:max(room, 0)] // the rest waits for the next diff
	}
	for attempt := 0; ; attempt++ {
		txs := append(append([]*sessionpb.Tx{}, starts...), carried...)
		if finalize {
			txs = append(txs, &sessionpb.Tx{Body: &sessionpb.Tx_Finalize{Finalize: &sessionpb.FinalizeRound{}}})
		}
		d := &sessionpb.Diff{EscrowId: q.id(), Nonce: q.replica.Nonce() + 1, Txs: txs}
		p, err := q.replica.Sequence(d)
		if err == nil {
			if err := session.SignDiff(q.g.key, q.snap.ChainId, d); err != nil {
				return nil, nil, err
			}
			return d, p, nil
		}
		// Pooled txs are verified and state-checked on intake, and one per
		// effect is kept, so a tx fails here only when an earlier tx of
		// the same diff moved its record on (a vote after the one that
		// resolved it): it is dropped, and the diff built again.
		var de *session.DiffError
		if !errors.As(err, &de) || de.Tx < len(starts) || de.Tx >= len(starts)+len(carried) || attempt > len(carried) {
			return nil, nil, err
		}
		bad := carried[de.Tx-len(starts)]
		q.forget(session.TxEffectKey(bad))
		q.g.log.Warn("dropped a pooled tx that does not apply", "escrow", q.id(), "err", err)
		carried = append(carried[:de.Tx-len(starts)], carried[de.Tx-len(starts)+1:]...)
	}
}

// carry lists the pooled txs that may still apply, in a fixed order
// (confirms and finishes first: the kind leads the key), and forgets the
// others.
func (q *sequencer) carry() []*sessionpb.Tx {
	q.intake()
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

// admit takes the txs member i answered: each is decoded (canonical
// bytes only), verified (its slot's holder signed it) and queued for the
// next build, where the state check follows (intake). A tx that fails, or
// that would put the member over maxPendingPerHost, is dropped and counted
// against the member. A tx already waiting is not verified again, since
// hosts answer their whole mempool every time. Verification goes through
// the gateway's memo, so building the diff that carries a tx costs a
// hash. Call it without mu.
func (q *sequencer) admit(i int, raws [][]byte) {
	if len(raws) == 0 {
		return
	}
	host := q.members[i].addr.String()
	fresh := make([]*pooled, 0, len(raws))
	seen := make(map[string]bool, len(raws))
	q.net.Lock()
	for _, raw := range raws {
		tx, err := session.DecodeTx(raw)
		if err != nil {
			q.g.metrics.droppedTx(host, err)
			continue
		}
		if k := session.TxEffectKey(tx); !q.known[k] && !seen[k] {
			seen[k] = true
			fresh = append(fresh, &pooled{tx: tx, key: k, from: i})
		}
	}
	q.net.Unlock()
	ok := fresh[:0]
	for _, p := range fresh {
		if err := session.VerifyHostTxWith(q.snap, p.tx, q.g.auth, q.g.memo); err != nil {
			q.g.metrics.droppedTx(host, err)
			continue
		}
		ok = append(ok, p)
	}
	q.net.Lock()
	defer q.net.Unlock()
	for _, p := range ok {
		switch {
		case q.known[p.key]: // another member sent it meanwhile
		case q.waiting[i] >= maxPendingPerHost:
			q.g.metrics.droppedTx(host, errPendingCap)
		default:
			q.known[p.key] = true
			q.waiting[i]++
			q.inbox = append(q.inbox, p)
		}
	}
}

// errPendingCap is a tx dropped because its member has maxPendingPerHost
// txs waiting.
var errPendingCap = fmt.Errorf("the host has %d txs waiting to be carried, the most one host may", maxPendingPerHost)

// forget removes the tx with effect key k from the pool. Call with mu
// held.
func (q *sequencer) forget(k string) {
	p, ok := q.pending[k]
	if !ok {
		return
	}
	delete(q.pending, k)
	q.net.Lock()
	q.unpool(p)
	q.net.Unlock()
}

// unpool frees p's place in the pool. Call with net held.
func (q *sequencer) unpool(p *pooled) {
	delete(q.known, p.key)
	q.waiting[p.from]--
}

// send queues diff nonce, whose post-state root is root, for every member.
// A diff that starts an inference goes to its executor at once and first:
// the app waits for that member, not for the others, which hold it
// (outbox) unless urgent: the caller waits for every member.
func (q *sequencer) send(nonce uint64, root [32]byte, raw []byte, reqs map[uint64]executor.Request, urgent bool) *delivery {
	d := q.newDelivery(nonce, root, raw, reqs)
	first := -1
	if len(reqs) > 0 {
		first = q.executorMember(nonce)
		if q.enqueue(first, d, true) {
			// The executor's delivery, just started, takes this thread
			// until its request is on the wire; the others' come after it.
			runtime.Gosched()
		}
	}
	q.sendRest(d, first, urgent)
	return d
}

// newDelivery is diff nonce, on its way to no member yet.
func (q *sequencer) newDelivery(nonce uint64, root [32]byte, raw []byte, reqs map[uint64]executor.Request) *delivery {
	d := &delivery{nonce: nonce, root: root, raw: raw, reqs: reqs, done: make([]chan error, len(q.members))}
	for i := range d.done {
		d.done[i] = make(chan error, 1)
	}
	return d
}

// sendRest queues d for every member but skip (-1: none).
func (q *sequencer) sendRest(d *delivery, skip int, urgent bool) {
	for i := range q.members {
		if i != skip {
			q.enqueue(i, d, urgent || q.g.cfg.HoldFor < 0)
		}
	}
}

// enqueue queues d for member i, and reports whether that started its
// outbox's goroutine. A diff that is not urgent is held while fewer than
// maxHeld wait.
func (q *sequencer) enqueue(i int, d *delivery, urgent bool) bool {
	out := &q.members[i].out
	out.mu.Lock()
	defer out.mu.Unlock()
	out.queue = append(out.queue, d)
	if urgent {
		out.urgentTo = max(out.urgentTo, d.nonce)
	}
	if out.running {
		return false // the running goroutine sends it, or holds it
	}
	if !out.ready(q.held()) {
		q.holdLocked(i)
		return false
	}
	q.startDrain(i)
	return true
}

// holdLocked arms member i's hold timer, unless it is armed. Call with its
// outbox's mu held.
func (q *sequencer) holdLocked(i int) {
	out := &q.members[i].out
	if out.hold == nil {
		out.hold = time.AfterFunc(q.holdFor(), func() { q.release(i) })
	}
}

// release sends member i's held diffs: their hold ended.
func (q *sequencer) release(i int) {
	out := &q.members[i].out
	out.mu.Lock()
	defer out.mu.Unlock()
	out.hold = nil
	if len(out.queue) == 0 {
		return
	}
	out.urgentTo = max(out.urgentTo, out.queue[len(out.queue)-1].nonce)
	if !out.running {
		q.startDrain(i)
	}
}

// sendHeld sends every member its held diffs now, and waits until each
// outbox is empty or ctx ends.
func (q *sequencer) sendHeld(ctx context.Context) {
	for i := range q.members {
		q.release(i)
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		idle := true
		for i := range q.members {
			out := &q.members[i].out
			out.mu.Lock()
			idle = idle && !out.running && len(out.queue) == 0
			out.mu.Unlock()
		}
		if idle {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// startDrain starts member i's outbox goroutine. Call with its mu held.
func (q *sequencer) startDrain(i int) {
	out := &q.members[i].out
	if out.hold != nil {
		out.hold.Stop()
		out.hold = nil
	}
	out.running = true
	go q.drainOutbox(i)
}

// drainOutbox delivers member i's queued diffs, as runs in nonce order,
// while they are ready to go; held ones wait for their timer.
func (q *sequencer) drainOutbox(i int) {
	out := &q.members[i].out
	for {
		out.mu.Lock()
		if !out.ready(q.held()) {
			out.running = false
			if len(out.queue) > 0 {
				q.holdLocked(i)
			}
			out.mu.Unlock()
			return
		}
		n := min(len(out.queue), hostapi.MaxDiffsPerDelivery)
		run := append([]*delivery(nil), out.queue[:n]...)
		clear(out.queue[:n])
		out.queue = out.queue[n:]
		out.mu.Unlock()
		txs, err := q.deliver(i, run)
		for _, d := range run {
			d.done[i] <- err
		}
		q.admit(i, txs) // after the answer: a request may be waiting for it
	}
}

// deliver brings member i up to the last diff of run, and returns the txs
// its mempool answered, as they came. A member that missed earlier diffs
// (it was down) is sent them first.
func (q *sequencer) deliver(i int, run []*delivery) ([][]byte, error) {
	m := q.members[i]
	d := run[len(run)-1]
	q.net.Lock()
	if q.downLocked(i, time.Now()) {
		q.net.Unlock()
		return nil, errSkipped
	}
	from := q.acked[i] + 1
	q.net.Unlock()
	ctx := q.g.loopCx // outlives the request that sequenced d; ends when the gateway halts
	resp, err := q.sendTo(ctx, m, from, run)
	var he *HostError
	if errors.As(err, &he) && he.Status == http.StatusConflict && from > 1 {
		// The host is behind what this gateway believed (it lost its
		// disk, or the gateway restarted): replay from the start; diffs
		// it has are idempotent no-ops.
		resp, err = q.sendTo(ctx, m, 1, run)
	}
	q.net.Lock()
	defer q.net.Unlock()
	if err != nil {
		if unreachable(err) {
			q.down[i] = time.Now().Add(downFor)
		}
		if ctx.Err() == nil {
			q.g.log.Warn("host did not take diff", "escrow", q.id(), "nonce", d.nonce, "host", m.url, "err", err)
		}
		return nil, err
	}
	delete(q.down, i)
	q.acked[i] = max(q.acked[i], resp.Nonce)
	q.absorb(d, resp)
	return resp.Mempool, nil
}

// broadcast queues diff nonce for every member and waits for their
// answers, or for ctx to end.
func (q *sequencer) broadcast(ctx context.Context, nonce uint64, raw []byte, reqs map[uint64]executor.Request) {
	var d sessionpb.Diff
	if err := d.Unmarshal(raw); err != nil {
		q.g.log.Error("stored diff does not decode", "escrow", q.id(), "nonce", nonce, "err", err)
		return
	}
	var root [32]byte
	copy(root[:], d.PostStateRoot)
	q.send(nonce, root, raw, reqs, true).waitAll(ctx)
}

// maxRunBytes bounds the body of one delivery, well under the host's
// limit (hostapi.MaxBody): a longer run goes out in parts.
const maxRunBytes = hostapi.MaxBody / 4

// sendTo brings member m from nonce from up to the last diff of run, in as
// few deliveries as the limits allow, and returns the last answer. Diffs
// before run come from the state file.
func (q *sequencer) sendTo(ctx context.Context, m *member, from uint64, run []*delivery) (*hostapi.DiffResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, q.g.cfg.HostTimeout)
	defer cancel()
	var (
		bodies [][]byte
		size   int
		first  = from // the first nonce in bodies
	)
	post := func() (*hostapi.DiffResponse, error) {
		body := bodies[0]
		if len(bodies) > 1 {
			body = runBody(bodies)
		}
		resp, err := q.g.peers.postDiff(ctx, m.url, m.addr, q.id(), body)
		if err != nil && first < run[0].nonce {
			err = fmt.Errorf("catching up from diff %d: %w", first, err)
		}
		first += uint64(len(bodies))
		bodies, size = bodies[:0], 0
		return resp, err
	}
	add := func(body []byte) error {
		if len(bodies) > 0 && (len(bodies) == hostapi.MaxDiffsPerDelivery || size+len(body) > maxRunBytes) {
			if _, err := post(); err != nil {
				return err
			}
		}
		bodies, size = append(bodies, body), size+len(body)
		return nil
	}
	for from < run[0].nonce {
		back, err := q.g.state.Diffs(ctx, q.id(), from, hostapi.MaxDiffsPerDelivery)
		if err != nil {
			return nil, err
		}
		for _, sd := range back {
			if sd.Nonce >= run[0].nonce {
				break
			}
			body, err := diffBody(sd.Data, sd.Requests)
			if err != nil {
				return nil, err
			}
			if err := add(body); err != nil {
				return nil, err
			}
			from = sd.Nonce + 1
		}
		if len(back) == 0 {
			break
		}
	}
	for _, d := range run {
		body, err := d.encoded()
		if err != nil {
			return nil, err
		}
		if err := add(body); err != nil {
			return nil, err
		}
	}
	return post()
}

// absorb takes a host's state signatures over d's root, kept (unverified
// until a settlement needs them) while d is the latest diff. Call with net
// held.
func (q *sequencer) absorb(d *delivery, resp *hostapi.DiffResponse) {
	if d.nonce != q.sigNonce {
		return
	}
	for _, raw := range resp.Signatures {
		ss, err := session.DecodeStateSignature(raw)
		if err != nil || ss.Nonce != d.nonce || string(ss.StateRoot) != string(d.root[:]) || ss.EscrowId != q.id() {
			continue
		}
		if _, ok := q.sigs[ss.Slot]; !ok {
			q.sigs[ss.Slot] = ss
		}
	}
}

// intake moves the members' verified txs into the pool, less those the
// replica's state no longer takes (carried meanwhile, or never
// applicable). Call with mu held.
func (q *sequencer) intake() {
	q.net.Lock()
	defer q.net.Unlock()
	for _, p := range q.inbox {
		if q.replica.MayInclude(p.tx) {
			q.pending[p.key] = p
		} else {
			q.unpool(p)
		}
	}
	clear(q.inbox)
	q.inbox = q.inbox[:0]
}

// collect reads every reachable member's mempool into the pool. Call with
// mu held.
func (q *sequencer) collect(ctx context.Context) {
	var wg sync.WaitGroup
	now := time.Now()
	for i, m := range q.members {
		if q.isDown(i, now) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, q.g.cfg.HostTimeout)
			defer cancel()
			txs, err := q.g.peers.mempool(ctx, m.url, m.addr, q.id())
			if err != nil {
				return
			}
			q.admit(i, txs)
		}()
	}
	wg.Wait()
	q.intake()
}

// quorum verifies the signatures gathered over the current root, forgets
// bad ones, and reports whether the good ones come from more than 2/3 of
// the group's slots.
func (q *sequencer) quorum() bool {
	q.net.Lock()
	defer q.net.Unlock()
	for slot, ss := range q.sigs {
		if ss.Slot != slot || session.VerifyStateSignature(q.snap, ss, q.g.auth) != nil {
			q.g.log.Warn("dropped a bad state signature", "escrow", q.id(), "slot", slot)
			delete(q.sigs, slot)
		}
	}
	return 3*len(q.sigs) > 2*len(q.snap.Group)
}

// settlement is the replica's settlement with the gathered signatures, in
// slot order. Call quorum first.
func (q *sequencer) settlement() *sessionpb.Settlement {
	q.net.Lock()
	defer q.net.Unlock()
	m := q.replica.Settlement()
	slots := make([]uint32, 0, len(q.sigs))
	for s := range q.sigs {
		slots = append(slots, s)
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i] < slots[j] })
	for _, s := range slots {
		m.Signatures = append(m.Signatures, &sessionpb.SlotSignature{Slot: s, Sig: q.sigs[s].Sig})
	}
	return m
}

// openRecords counts the inferences still waiting for an executor's
// answer or a timeout.
func (q *sequencer) openRecords() int {
	n := 0
	for _, r := range q.replica.State().Live {
		if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING || r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED {
			n++
		}
	}
	return n
}
