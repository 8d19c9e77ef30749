package host

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session/sessionpb"
)

// run is an inference this host started executing as soon as it had checked
// the diff that starts it, while the diff was still being signed and
// stored. The gateway's inference stream attaches to it and reads its text
// as it comes, without waiting for the durable write.
//
// What waits for the write is what commits the host to the new state: its
// state signatures, in the diff's reply, and the pooling of the run's txs.
// The stream's ConfirmStart and FinishInference commit it to nothing but
// its own work: they apply only to a state holding the diff, which the
// gateway has stored before sending it and delivers again to a host that
// lost it. A diff this host fails to store stops its run.
type run struct {
	en     *entry
	nonce  uint64
	slot   uint32
	req    executor.Request
	cancel context.CancelFunc
	stored bool // set under en.mu once the diff is committed

	confirmed chan struct{} // closed once confirm is signed (or the run failed first)
	confirm   *sessionpb.Tx

	mu       sync.Mutex
	pieces   []string
	changed  chan struct{} // closed and replaced at every piece and at the end
	ended    bool
	res      executor.Result
	finish   *sessionpb.Tx
	err      error
	attached bool // a stream took this run; a run streams once
}

// runKey names a run in the engine's registry.
type runKey struct{ escrow, nonce uint64 }

// runs is the engine's registry of runs, read by streams without the
// session's lock. changed is closed and replaced whenever a run is
// registered or a diff applied, for streams waiting for their start.
type runs struct {
	mu      sync.Mutex
	byKey   map[runKey]*run
	changed chan struct{}
}

func newRuns() *runs { return &runs{byKey: map[runKey]*run{}, changed: make(chan struct{})} }

// poke wakes the streams waiting for a start.
func (rs *runs) poke() {
	rs.mu.Lock()
	close(rs.changed)
	rs.changed = make(chan struct{})
	rs.mu.Unlock()
}

func (rs *runs) put(k runKey, r *run) {
	rs.mu.Lock()
	rs.byKey[k] = r
	close(rs.changed)
	rs.changed = make(chan struct{})
	rs.mu.Unlock()
}

// take returns run k for a stream, marking it attached, and the channel
// that says something changed. A run already attached is an error.
func (rs *runs) take(k runKey) (*run, <-chan struct{}, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r, ok := rs.byKey[k]
	if !ok {
		return nil, rs.changed, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.attached {
		return nil, nil, fmt.Errorf("%w: inference %d is already being streamed; it runs once", ErrBadInput, k.nonce)
	}
	r.attached = true
	return r, nil, nil
}

// drop forgets run k and stops it if it still runs.
func (rs *runs) drop(k runKey) {
	rs.mu.Lock()
	r, ok := rs.byKey[k]
	delete(rs.byKey, k)
	rs.mu.Unlock()
	if ok {
		r.cancel()
	}
}

// push keeps a piece of text for the stream.
func (r *run) push(piece string) error {
	r.mu.Lock()
	r.pieces = append(r.pieces, piece)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return nil
}

// end records the run's outcome.
func (r *run) end(res executor.Result, finish *sessionpb.Tx, err error) {
	r.mu.Lock()
	r.res, r.finish, r.err, r.ended = res, finish, err, true
	close(r.changed)
	r.mu.Unlock()
}

// RunInference runs req as inference nonce of escrow on the engine's
// inference path and streams its output to emit: Config.Executor in
// process or, with Config.InferenceJobs, a job of the host's workers whose
// pieces come back through the worker routes. It is the run a diff starts,
// without the session around it (no confirm, no finish tx): startRun and
// Inference call it, and benchmarks and tools may.
func (e *Engine) RunInference(ctx context.Context, escrow, nonce uint64, req executor.Request, emit func(string) error) (executor.Result, error) {
	return e.infer.Execute(withInference(ctx, escrow, nonce), req, emit)
}

// startRun executes inference nonce in the background. Call with en.mu
// held, once the diff starting it is checked; the caller drops the run if
// the diff is not stored, and marks it stored if it is.
func (e *Engine) startRun(en *entry, nonce uint64, slot uint32, req executor.Request) *run {
	timeout := time.Duration(max(en.snap.ExecutionTimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	r := &run{en: en, nonce: nonce, slot: slot, req: req, cancel: cancel, confirmed: make(chan struct{}), changed: make(chan struct{})}
	escrowID := en.snap.EscrowId
	confirm := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: nonce, ConfirmedAt: e.cfg.Now().Unix()}}}
	e.runs.put(runKey{escrowID, nonce}, r)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer cancel()
		if err := e.signTx(en.snap, confirm); err != nil {
			close(r.confirmed)
			r.end(executor.Result{}, nil, err)
			return
		}
		r.confirm = confirm
		close(r.confirmed)
		res, err := e.RunInference(ctx, escrowID, nonce, req, r.push)
		if err != nil {
			r.end(executor.Result{}, nil, err)
			return
		}
		finish := finishTx(slot, nonce, res)
		if err := e.signTx(en.snap, finish); err != nil {
			r.end(executor.Result{}, nil, err)
			return
		}
		r.end(res, finish, nil)
	}()
	return r
}

// awaitRun waits, for at most StartWait, until inference nonce of the
// escrow has a run to attach to, or a diff has been applied at nonce or
// beyond (the inference then runs the ordinary way, or is refused). It
// takes no session lock, so a stream does not wait for a diff's durable
// write. It returns nil when there is no run to attach to.
func (e *Engine) awaitRun(ctx context.Context, escrowID, nonce uint64) (*run, error) {
	t := time.NewTimer(e.cfg.StartWait)
	defer t.Stop()
	for {
		r, changed, err := e.runs.take(runKey{escrowID, nonce})
		if r != nil || err != nil {
			return r, err
		}
		if e.appliedNonce(escrowID) >= nonce {
			return nil, nil
		}
		select {
		case <-changed:
		case <-t.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// appliedNonce is the escrow's applied nonce, read without its lock. An
// escrow not loaded yet starts loading and reads 0 until it is; one that
// failed to load reads as done, for the caller to meet the load's error.
func (e *Engine) appliedNonce(escrowID uint64) uint64 {
	if !e.Ready() {
		return ^uint64(0)
	}
	en := e.entryFor(escrowID)
	select {
	case <-en.done:
		if en.loadErr != nil {
			return ^uint64(0)
		}
		return en.nonce.Load()
	default:
		return 0
	}
}

// stream hands r's text to emit as it comes and returns its outcome. The
// run's txs are pooled, once its diff is stored, in the background: the
// stream does not wait for the durable write.
func (e *Engine) stream(ctx context.Context, r *run, req executor.Request, emit func(string) error) (executor.Result, []*sessionpb.Tx, error) {
	if h, want := req.PromptHash(), r.req.PromptHash(); h != want || req.MaxTokens != r.req.MaxTokens {
		r.mu.Lock()
		r.attached = false // the right request may still come
		r.mu.Unlock()
		return executor.Result{}, nil, fmt.Errorf("%w: the request does not match what diff %d started (prompt hash or max tokens)", ErrBadInput, r.nonce)
	}
	select {
	case <-r.confirmed:
	case <-ctx.Done():
		return executor.Result{}, nil, ctx.Err()
	}
	pooled := make(chan struct{})
	e.poolOnceStored(r, r.confirm, nil, pooled)
	sent := 0
	for {
		r.mu.Lock()
		fresh := strings.Join(r.pieces[sent:], "")
		sent = len(r.pieces)
		ended, changed := r.ended, r.changed
		r.mu.Unlock()
		// What came since the last look goes out as one piece: one event
		// and one write, however many pieces the model made meanwhile.
		if fresh != "" {
			if err := emit(fresh); err != nil {
				r.cancel()
				return executor.Result{}, nil, err
			}
		}
		if ended {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			r.cancel()
			return executor.Result{}, nil, ctx.Err()
		}
	}
	if r.err != nil {
		return executor.Result{}, nil, r.err
	}
	e.poolOnceStored(r, r.finish, pooled, nil)
	return r.res, []*sessionpb.Tx{r.confirm, r.finish}, nil
}

// poolOnceStored pools tx of r in the background once r's diff is decided:
// ApplyDiff holds the session's lock until it is. A run whose diff was not
// stored pools nothing. after, if set, is waited for first; done, if set,
// is closed at the end.
func (e *Engine) poolOnceStored(r *run, tx *sessionpb.Tx, after <-chan struct{}, done chan struct{}) {
	if tx == nil {
		if done != nil {
			close(done)
		}
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if done != nil {
			defer close(done)
		}
		if after != nil {
			<-after
		}
		en := r.en
		en.mu.Lock()
		if r.stored {
			en.pool.add(tx, en.s.Nonce(), true)
		}
		en.mu.Unlock()
		if tx.GetFinish() != nil {
			e.runs.drop(runKey{en.snap.EscrowId, r.nonce}) // streamed: en.ran keeps it from running again
		}
	}()
}

// finishTx is the executor's FinishInference for res, unsigned.
func finishTx(slot uint32, nonce uint64, res executor.Result) *sessionpb.Tx {
	hash := res.ResponseHash()
	return &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{
		InferenceId: nonce, InputTokens: uint64(res.Usage.PromptTokens), OutputTokens: uint64(res.Usage.CompletionTokens), ResponseHash: hash[:],
	}}}
}
