package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
)

// Complete runs one request: it starts it in a session, streams the
// executor's text to emit, and on an executor that refuses, dies or stalls,
// retries under a new nonce on another host. Text already emitted is not
// emitted twice: a retry's output must repeat it (deterministic models do)
// or the request fails. req must have been normalized.
func (g *Gateway) Complete(ctx context.Context, req executor.Request, emit func(string) error) (*Completion, error) {
	defer g.metrics.begin()()
	a := &answer{emit: g.metrics.firstToken(emit)}
	// The app's request id (hostapi.WithRequestID) ties these lines to
	// the app's answer and to the executor's log.
	rid := hostapi.RequestID(ctx)
	var lastErr error
	for attempt := 1; attempt <= g.cfg.Attempts; attempt++ {
		e, st, err := g.sequence(ctx, req, a)
		if err != nil {
			return nil, err
		}
		g.log.Info("request sequenced", "request_id", rid, "escrow", e.id(), "nonce", st.nonce, "attempt", attempt)
		res, err := g.stream(ctx, e, st, req, a)
		if err == nil {
			c, err := g.completed(e, st, req, a, res, attempt)
			if err == nil {
				g.log.Info("request finished", "request_id", rid, "escrow", e.id(), "nonce", st.nonce,
					"prompt_tokens", c.Usage.PromptTokens, "completion_tokens", c.Usage.CompletionTokens, "cost", c.Cost)
			} else {
				g.log.Warn("request failed", "request_id", rid, "escrow", e.id(), "nonce", st.nonce, "err", err)
			}
			return c, err
		}
		var f *executorFailure
		if !errors.As(err, &f) {
			g.log.Warn("request failed", "request_id", rid, "escrow", e.id(), "nonce", st.nonce, "err", err)
			return nil, err
		}
		lastErr = f.err
		g.metrics.retries.Inc()
		g.log.Warn(f.what, "request_id", rid, "escrow", e.id(), "nonce", st.nonce, "attempt", attempt, "err", f.err)
		e.out.markDown(st.url)
	}
	return nil, fmt.Errorf("%w after %d attempts: %v", ErrNoHost, g.cfg.Attempts, lastErr)
}

// answer is a request's answer on its way to the app, across attempts.
// Nothing of an attempt's answer reaches the app before the diff that
// started it is stored: the app's answer is always on the books. Pieces
// that come before the write has landed are held, and the stream read on
// meanwhile.
type answer struct {
	emit      func(string) error
	delivered []byte // text already given to emit, across attempts
	rotations int    // escrows retired for this request

	// The current attempt's:
	text     []byte       // its executor's text so far
	held     []string     // pieces not yet passed on
	stored   <-chan error // the write of its start's diff
	isStored bool         // storeErr is the write's outcome
	storeErr error
}

// begin starts a new attempt, whose start's write reports on stored.
func (a *answer) begin(stored <-chan error) {
	a.text, a.held = nil, nil
	a.stored, a.isStored, a.storeErr = stored, false, nil
}

// forward takes a piece of the executor's text: passed on if the start is
// stored, held otherwise.
func (a *answer) forward(piece string) error {
	a.held = append(a.held, piece)
	if ok, err := a.written(false); !ok || err != nil {
		return err
	}
	return a.release()
}

// written reports whether the start's write is done, and its outcome;
// block waits for it. The write is not cut short by the request's end.
func (a *answer) written(block bool) (bool, error) {
	if !a.isStored {
		if block {
			a.storeErr = <-a.stored
		} else {
			select {
			case a.storeErr = <-a.stored:
			default:
				return false, nil
			}
		}
		a.isStored = true
	}
	return true, a.storeErr
}

// release passes on the pieces held.
func (a *answer) release() error {
	for len(a.held) > 0 {
		piece := a.held[0]
		a.held = a.held[1:]
		if err := a.pass(piece); err != nil {
			return err
		}
	}
	return nil
}

// pass gives the app what piece adds to what it has. A retry repeats
// what the app already has, which is checked and not emitted again.
func (a *answer) pass(piece string) error {
	a.text = append(a.text, piece...)
	n := min(len(a.text), len(a.delivered))
	if string(a.text[:n]) != string(a.delivered[:n]) {
		return errDiverged
	}
	if len(a.text) <= len(a.delivered) {
		return nil // a retry repeating what the app already has
	}
	fresh := a.text[max(len(a.delivered), len(a.text)-len(piece)):]
	a.delivered = append(a.delivered, fresh...)
	return a.emit(string(fresh))
}

var errDiverged = errors.New("retried output diverged")

// executorFailure is an attempt that failed on its executor: another
// executor may serve the request.
type executorFailure struct {
	what string // the log's sentence
	err  error
}

func (f *executorFailure) Error() string { return f.what + ": " + f.err.Error() }
func (f *executorFailure) Unwrap() error { return f.err }

// sequence starts req in an escrow that takes requests. An escrow too low
// for it is retired and the next one tried, at most maxRotations per
// request: that is not the executor's fault, so it costs no attempt.
func (g *Gateway) sequence(ctx context.Context, req executor.Request, a *answer) (*escrow, *started, error) {
	for {
		e, err := g.escrowFor(ctx)
		if err != nil {
			return nil, nil, err
		}
		began := time.Now()
		st, err := e.seq.start(ctx, req)
		if errors.Is(err, errEscrowLow) {
			g.retire(e)
			if a.rotations++; a.rotations > maxRotations {
				return nil, nil, fmt.Errorf("%w: %d fresh escrows could not take the request", ErrNoHost, maxRotations)
			}
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		g.metrics.phase(PhaseSequence, began)
		return e, st, nil
	}
}

// stream runs the inference st started on its executor and passes its
// text on to the app (a). It returns the executor's result; an
// *executorFailure if another executor may be tried; or another error,
// which ends the request.
func (g *Gateway) stream(ctx context.Context, e *escrow, st *started, req executor.Request, a *answer) (*hostapi.InferenceResult, error) {
	a.begin(st.stored)
	began := time.Now()
	// The stream is asked for at once, beside the diff's delivery: the
	// executor starts the inference when it has checked the diff, and
	// its stream waits for it. A delivery that fails ends the stream.
	streamCx, cancelStream := context.WithCancel(ctx)
	taken := make(chan error, 1)
	go g.awaitTaken(streamCx, cancelStream, st, began, taken)
	res, err := g.peers.Inference(streamCx, st.url, st.addr, e.id(), st.nonce, req, g.cfg.StallTimeout, a.forward)
	g.metrics.hostAnswered(st.url, time.Since(began), err)
	g.metrics.phase(PhaseStream, began)
	if _, serr := a.written(true); serr != nil {
		cancelStream()
		<-taken
		return nil, serr // the diff stays unwritten: its nonce is taken (sequencer.store)
	}
	if err == nil {
		err = a.release()
	}
	cancelStream()
	// A whole answer stands whatever became of the delivery: the
	// executor streams only a diff it has checked. A failed stream
	// whose delivery failed is the delivery's failure (a delivery still
	// pending was cut by cancelStream above and does not count).
	if deliveryErr := <-taken; err != nil && deliveryErr != nil && !errors.Is(deliveryErr, context.Canceled) && ctx.Err() == nil {
		// The executor did not take the diff that starts the request:
		// retry on another host, as if it had failed the stream.
		return nil, &executorFailure{what: "executor did not take the start; retrying on another host", err: deliveryErr}
	}
	switch {
	case err == nil:
		return res, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, errDiverged):
		return nil, fmt.Errorf("%w: the executor died mid-stream and the retry's answer differs from what was already streamed", ErrNoHost)
	case !isHostError(err):
		return nil, err // the app went away: emit failed
	}
	return nil, &executorFailure{what: "executor failed; retrying on another host", err: err}
}

// awaitTaken reports on taken the executor's answer to the diff st
// started, and cuts the stream (cancel) if it did not take it.
func (g *Gateway) awaitTaken(ctx context.Context, cancel context.CancelFunc, st *started, began time.Time, taken chan<- error) {
	err := st.sent.wait(ctx, st.exec)
	if err == nil {
		g.metrics.phase(PhaseExecutor, began)
	} else {
		cancel()
	}
	taken <- err
}

// completed is the request's Completion, from the attempt whose executor
// answered res.
func (g *Gateway) completed(e *escrow, st *started, req executor.Request, a *answer, res *hostapi.InferenceResult, attempt int) (*Completion, error) {
	if len(a.text) < len(a.delivered) {
		return nil, fmt.Errorf("%w: the retried answer is shorter than what was already streamed", ErrNoHost)
	}
	// Verified now, so that they are carried by the next diff even if the
	// host dies now; the memo makes carrying them cheap.
	e.in.admit(st.exec, res.Txs)
	g.metrics.served(res.Usage, st.charge(res.Usage))
	return &Completion{Text: string(a.text), Usage: res.Usage, FinishReason: res.FinishReason, Model: req.Model,
		EscrowID: e.id(), Nonce: st.nonce, Attempts: attempt, Cost: st.charge(res.Usage)}, nil
}
