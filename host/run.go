package host

import (
	"context"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session/sessionpb"
)

// run is an inference this host started executing as soon as it had checked
// the diff that starts it, while the diff was still being stored. Its text
// is kept until the gateway's inference stream attaches and reads it.
//
// Nothing of a run leaves the host before its diff is committed: the stream
// attaches only to a live record, and the run's txs are pooled by the
// stream, so a diff that fails to store takes its run with it.
type run struct {
	nonce  uint64
	slot   uint32
	req    executor.Request
	cancel context.CancelFunc

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

func newRun(nonce uint64, slot uint32, req executor.Request, cancel context.CancelFunc) *run {
	return &run{nonce: nonce, slot: slot, req: req, cancel: cancel, confirmed: make(chan struct{}), changed: make(chan struct{})}
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

// startRun executes inference nonce in the background. Call with en.mu
// held, once the diff starting it is checked; the caller must drop the run
// if the diff is not stored.
func (e *Engine) startRun(en *entry, nonce uint64, slot uint32, req executor.Request) {
	timeout := time.Duration(max(en.snap.ExecutionTimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	r := newRun(nonce, slot, req, cancel)
	en.runs[nonce] = r
	escrowID := en.snap.EscrowId
	confirm := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: nonce, ConfirmedAt: e.cfg.Now().Unix()}}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer cancel()
		if err := e.signTx(escrowID, confirm); err != nil {
			close(r.confirmed)
			r.end(executor.Result{}, nil, err)
			return
		}
		r.confirm = confirm
		close(r.confirmed)
		res, err := e.cfg.Executor.Execute(ctx, req, r.push)
		if err != nil {
			r.end(executor.Result{}, nil, err)
			return
		}
		finish := finishTx(slot, nonce, res)
		if err := e.signTx(escrowID, finish); err != nil {
			r.end(executor.Result{}, nil, err)
			return
		}
		r.end(res, finish, nil)
	}()
}

// dropRun forgets run nonce and stops it if it still runs. Call with en.mu
// held.
func (en *entry) dropRun(nonce uint64) {
	if r, ok := en.runs[nonce]; ok {
		r.cancel()
		delete(en.runs, nonce)
	}
}

// stream attaches to r and hands its text to emit as it comes, then
// returns its outcome. It pools the confirm as soon as it is signed and the
// finish at the end, as a direct run does. Call without en.mu.
func (e *Engine) stream(ctx context.Context, en *entry, r *run, emit func(string) error) (executor.Result, []*sessionpb.Tx, error) {
	select {
	case <-r.confirmed:
	case <-ctx.Done():
		return executor.Result{}, nil, ctx.Err()
	}
	if r.confirm != nil {
		en.mu.Lock()
		en.pool.add(r.confirm, en.s.Nonce(), true)
		en.mu.Unlock()
	}
	sent := 0
	for {
		r.mu.Lock()
		fresh := r.pieces[sent:]
		sent = len(r.pieces)
		ended, changed := r.ended, r.changed
		r.mu.Unlock()
		for _, piece := range fresh {
			if err := emit(piece); err != nil {
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
	en.mu.Lock()
	en.pool.add(r.finish, en.s.Nonce(), true)
	delete(en.runs, r.nonce)
	en.mu.Unlock()
	e.announce(en.snap, r.confirm, r.finish)
	return r.res, []*sessionpb.Tx{r.confirm, r.finish}, nil
}

// finishTx is the executor's FinishInference for res, unsigned.
func finishTx(slot uint32, nonce uint64, res executor.Result) *sessionpb.Tx {
	hash := res.ResponseHash()
	return &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{
		InferenceId: nonce, InputTokens: uint64(res.Usage.PromptTokens), OutputTokens: uint64(res.Usage.CompletionTokens), ResponseHash: hash[:],
	}}}
}
