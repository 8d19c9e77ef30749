package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/signing"
)

// Inferences run by external workers (Config.InferenceJobs, docs/jobs.md,
// "Inference jobs"). The engine enqueues the inference as a job of its own
// inference kind (jobs.InferenceFor) and waits. A worker claims it, sends
// the output in pieces through JobPieces, and the host forwards each piece
// to the user at once, as its own executor's pieces. The job's finish
// carries the whole text, which must be the pieces joined: the response
// hash the host signs is over what the user saw.
//
// The stream is bound to the claim that started it. Pieces are taken only
// from the lease the host handed out, in order, so a worker whose lease
// was taken back cannot add to the answer. A job that loses its worker
// before its first piece is retried as any job is; one that loses it
// mid-stream fails the request (the user has half an answer, and a retry
// would send the first half again), and the gateway retries it on another
// host.

// inferenceCtx carries which inference an Execute call runs, for
// jobExecutor, whose input names it.
type inferenceCtx struct{}

type inferenceRef struct{ escrow, nonce uint64 }

func withInference(ctx context.Context, escrow, nonce uint64) context.Context {
	return context.WithValue(ctx, inferenceCtx{}, inferenceRef{escrow, nonce})
}

// jobExecutor is the engine's executor when workers run its inferences.
type jobExecutor struct{ e *Engine }

func (x jobExecutor) Models() []string { return x.e.cfg.Executor.Models() }

func (x jobExecutor) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	ref, ok := ctx.Value(inferenceCtx{}).(inferenceRef)
	if !ok {
		return executor.Result{}, errors.New("host: an inference job needs its escrow and nonce (withInference)")
	}
	return x.e.runInferenceJob(ctx, ref, req, emit)
}

// jobStreams are the inference jobs whose output a user waits for on this
// host, by job id.
type jobStreams struct {
	mu   sync.Mutex
	byID map[string]*jobStream
}

func (s *jobStreams) open(id string, emit func(string) error) (*jobStream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID == nil {
		s.byID = map[string]*jobStream{}
	}
	if _, ok := s.byID[id]; ok {
		return nil, fmt.Errorf("inference job %s already has a user waiting on this host", jobs.ShortID(id))
	}
	st := &jobStream{id: id, emit: emit, changed: make(chan struct{})}
	s.byID[id] = st
	return st, nil
}

func (s *jobStreams) get(id string) *jobStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

// close ends the stream: once it returns, no piece is forwarded any more.
func (s *jobStreams) close(st *jobStream) {
	s.mu.Lock()
	delete(s.byID, st.id)
	s.mu.Unlock()
	st.mu.Lock()
	st.closed = true
	st.mu.Unlock()
}

// jobStream is one inference job's output on its way to the user.
type jobStream struct {
	id   string
	emit func(string) error

	mu      sync.Mutex    // held while a piece is forwarded
	changed chan struct{} // closed and replaced at a claim, a heartbeat and the end
	closed  bool          // the user's call returned: nothing more is forwarded

	lease   jobs.Lease // the claim the stream is bound to; zero until claimed
	expires time.Time
	seq     uint64          // the next batch of pieces expected
	text    strings.Builder // forwarded so far
	sent    bool            // a piece reached the user

	done bool
	out  hostapi.InferenceOutput
	err  error
}

func (st *jobStream) signal() {
	close(st.changed)
	st.changed = make(chan struct{})
}

// claimed binds the stream to a new claim. It refuses once a piece of an
// earlier claim reached the user: the retry would repeat the answer.
func (st *jobStream) claimed(lease jobs.Lease, expires time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed || st.sent || st.done {
		return false
	}
	st.lease, st.expires, st.seq = lease, expires, 0
	st.signal()
	return true
}

func (st *jobStream) heartbeat(lease jobs.Lease, expires time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.lease == lease {
		st.expires = expires
		st.signal()
	}
}

// errStreamGone is the user no longer waiting.
var errStreamGone = errors.New("no user waits for this inference any more")

// pieces forwards the seq-th batch of the claim lease. A batch taken
// already is accepted again and forwards nothing.
func (st *jobStream) pieces(lease jobs.Lease, seq uint64, pieces []string, limit int) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if status, err := st.admit(lease, seq); status != 0 || err != nil {
		return status, err
	}
	return st.forward(pieces, limit)
}

// admit is the fence of a batch of pieces: the claim's own lease, the
// next seq. A status of 0 with no error admits it; 200 is a batch taken
// already, to forward nothing.
func (st *jobStream) admit(lease jobs.Lease, seq uint64) (int, error) {
	switch {
	case st.closed || st.done:
		return http.StatusGone, errStreamGone
	case st.lease != lease:
		return http.StatusConflict, fmt.Errorf("the stream of job %s is bound to another claim (attempt %d): pieces of attempt %d are refused", jobs.ShortID(st.id), st.lease.Attempt, lease.Attempt)
	case seq < st.seq:
		return http.StatusOK, nil
	case seq > st.seq:
		return http.StatusConflict, fmt.Errorf("pieces out of order: batch %d of job %s is next, got %d", st.seq, jobs.ShortID(st.id), seq)
	}
	return 0, nil
}

// forward sends an admitted batch to the user.
func (st *jobStream) forward(pieces []string, limit int) (int, error) {
	n := st.text.Len()
	for _, p := range pieces {
		n += len(p)
	}
	if n > limit {
		return http.StatusRequestEntityTooLarge, fmt.Errorf("the output of job %s would exceed %d bytes, the most a job result holds", jobs.ShortID(st.id), limit)
	}
	st.seq++
	for _, p := range pieces {
		if p == "" {
			continue
		}
		st.sent = true
		st.text.WriteString(p)
		if err := st.emit(p); err != nil {
			st.closed = true
			st.signal()
			return http.StatusGone, fmt.Errorf("%w: %v", errStreamGone, err)
		}
	}
	return http.StatusOK, nil
}

// finishing takes a finish of the claim lease: its last batch of pieces,
// the seq-th (none: nothing to forward), and its output, whose text must
// be the pieces forwarded and this batch joined. Nothing is forwarded
// unless the text is right, so a refused finish leaves the stream as it
// was.
func (st *jobStream) finishing(lease jobs.Lease, seq uint64, pieces []string, out hostapi.InferenceOutput, limit int) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(pieces) == 0 {
		if st.lease == lease && st.sent && out.Text != st.text.String() {
			return http.StatusBadRequest, fmt.Errorf("the result's text (%d bytes) is not the pieces streamed (%d bytes): the user has those, and the host signs what the user saw", len(out.Text), st.text.Len())
		}
		return http.StatusOK, nil
	}
	if st.done && st.lease == lease && seq < st.seq {
		// The finish again, after a lost reply: the queue answers it.
		return http.StatusOK, nil
	}
	status, err := st.admit(lease, seq)
	if err != nil {
		return status, err
	}
	streamed := st.text.String()
	if status == 0 {
		streamed += strings.Join(pieces, "")
	}
	if out.Text != streamed {
		return http.StatusBadRequest, fmt.Errorf("the result's text (%d bytes) is not the pieces streamed and sent with it (%d bytes): the user gets those, and the host signs what the user saw", len(out.Text), len(streamed))
	}
	if status != 0 {
		return http.StatusOK, nil // this batch was taken already
	}
	return st.forward(pieces, limit)
}

// end records the job's outcome for the waiting user.
func (st *jobStream) end(out hostapi.InferenceOutput, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return
	}
	st.done, st.out, st.err = true, out, err
	st.signal()
}

// inferenceKind is the kind of this host's inference jobs.
func (e *Engine) inferenceKind() jobs.Kind { return jobs.InferenceFor(e.addr.String()) }

// runInferenceJob runs req as an inference job and streams its output to
// emit.
func (e *Engine) runInferenceJob(ctx context.Context, ref inferenceRef, req executor.Request, emit func(string) error) (executor.Result, error) {
	q := e.plane.q
	if q == nil {
		return executor.Result{}, fmt.Errorf("%w: the job queue is not open", executor.ErrUpstream)
	}
	input, err := json.Marshal(hostapi.InferenceInput{Host: e.addr.String(), Escrow: ref.escrow, Inference: ref.nonce, Request: req})
	if err != nil {
		return executor.Result{}, err
	}
	kind := e.inferenceKind()
	id := jobs.JobID(kind, input)
	st, err := e.streams.open(id, emit)
	if err != nil {
		return executor.Result{}, err
	}
	defer e.streams.close(st)
	j, created, err := q.Enqueue(ctx, kind, input)
	if err != nil {
		return executor.Result{}, fmt.Errorf("%w: enqueue the inference: %v", executor.ErrUpstream, err)
	}
	if !created {
		if j.State == jobs.Succeeded {
			// Run for an earlier request (within the queue's Lifetime):
			// its answer stands, sent whole.
			var out hostapi.InferenceOutput
			if err := json.Unmarshal(j.Result, &out); err == nil {
				if err := emit(out.Text); err != nil {
					return executor.Result{}, err
				}
				return result(out), nil
			}
		}
		// A job left by an earlier request whose stream is gone (or, in a
		// queue kept before inference jobs were volatile, by an earlier
		// process). It starts again, and its old worker's calls find no
		// job.
		if err := q.Remove(ctx, id); err != nil && !errors.Is(err, jobs.ErrNotFound) {
			return executor.Result{}, fmt.Errorf("%w: replace a stale inference job: %v", executor.ErrUpstream, err)
		}
		if _, _, err := q.Enqueue(ctx, kind, input); err != nil {
			return executor.Result{}, fmt.Errorf("%w: enqueue the inference: %v", executor.ErrUpstream, err)
		}
	}
	out, err := e.awaitInferenceJob(ctx, st)
	if err != nil {
		// The job must not run on for nobody: its worker's next call
		// finds no job and stops.
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if rerr := q.Remove(rmCtx, id); rerr != nil && !errors.Is(rerr, jobs.ErrNotFound) {
			e.log.Warn("cannot remove an abandoned inference job", "job", jobs.ShortID(id), "err", rerr)
		}
		cancel()
		return executor.Result{}, err
	}
	return result(out), nil
}

func result(out hostapi.InferenceOutput) executor.Result {
	return executor.Result{Text: out.Text, Usage: out.Usage, FinishReason: out.FinishReason}
}

// awaitInferenceJob waits for st's job to end. A job no worker claims
// within the heartbeat timeout, or whose worker stops heartbeating after
// its first piece, fails the request.
func (e *Engine) awaitInferenceJob(ctx context.Context, st *jobStream) (hostapi.InferenceOutput, error) {
	timeout := e.plane.q.Options().HeartbeatTimeout
	waitClaim := time.Now().Add(timeout)
	for {
		st.mu.Lock()
		done, out, err, sent := st.done, st.out, st.err, st.sent
		claimed, expires, changed := st.lease != (jobs.Lease{}), st.expires, st.changed
		closed := st.closed
		st.mu.Unlock()
		switch {
		case done && err == nil && !sent && out.Text != "":
			// The worker streamed nothing: the user gets the text whole.
			if err := st.emitWhole(out.Text); err != nil {
				return hostapi.InferenceOutput{}, err
			}
			return out, nil
		case done:
			return out, err
		case closed:
			return hostapi.InferenceOutput{}, fmt.Errorf("%w: the user went away", errStreamGone)
		}
		deadline := waitClaim
		if claimed {
			deadline = expires
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			if err := e.lostInferenceJob(ctx, st, claimed, sent, timeout); err != nil {
				return hostapi.InferenceOutput{}, err
			}
			waitClaim = time.Now().Add(timeout)
			continue
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return hostapi.InferenceOutput{}, ctx.Err()
		case <-changed:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// lostInferenceJob decides what a deadline passed means: no worker
// claimed the job in time, or its worker stopped heartbeating. A job
// retried before its first piece waits for its next claim (nil).
func (e *Engine) lostInferenceJob(ctx context.Context, st *jobStream, claimed, sent bool, timeout time.Duration) error {
	if !claimed {
		return fmt.Errorf("%w: no worker claimed the inference within %s (are the workers running and accepting inference jobs?)", executor.ErrUpstream, timeout)
	}
	if sent {
		return fmt.Errorf("%w: the worker running the inference stopped heartbeating mid-stream", executor.ErrUpstream)
	}
	j, err := e.plane.q.Get(ctx, st.id)
	switch {
	case err != nil:
		return fmt.Errorf("%w: the inference job is gone: %v", executor.ErrUpstream, err)
	case j.State == jobs.Failed:
		return fmt.Errorf("%w: the inference job failed: %s", executor.ErrUpstream, j.Error)
	}
	// Taken back (or about to be) and retried: the stream waits for the
	// next claim, unbound meanwhile.
	st.mu.Lock()
	if j.State == jobs.Running && j.Attempt == st.lease.Attempt {
		// The rescuer (every third of the timeout) has not taken the
		// lease back yet, and a late heartbeat may still keep it: look
		// again soon.
		st.expires = time.Now().Add(timeout / 3)
	} else if j.Attempt == st.lease.Attempt {
		st.lease, st.expires = jobs.Lease{}, time.Time{}
	}
	st.mu.Unlock()
	return nil
}

func (st *jobStream) emitWhole(text string) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sent = true
	st.text.WriteString(text)
	return st.emit(text)
}

// claimedInference binds a claimed inference job to the user waiting for
// it. False means no user waits (the request ended, or it belongs to an
// earlier process): the caller fails the job and claims again.
func (e *Engine) claimedInference(c *jobs.Claim) bool {
	st := e.streams.get(c.Lease.JobID)
	return st != nil && st.claimed(c.Lease, c.Expires)
}

// jobPieces takes the next batch of an inference job's output.
func (h *handler) jobPieces(w http.ResponseWriter, r *http.Request, _ signing.Address, body []byte) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	var req hostapi.PiecesRequest
	if !decodeStrict(w, body, &req) {
		return
	}
	st := h.e.streams.get(id)
	if st == nil {
		if _, err := h.e.plane.q.Get(r.Context(), id); err != nil {
			h.jobFail(w, err)
			return
		}
		writeError(w, http.StatusGone, fmt.Sprintf("no user waits on this host for the output of job %s: its request ended, or the job is not an inference of this host", jobs.ShortID(id)))
		return
	}
	status, err := st.pieces(jobs.Lease{JobID: id, Attempt: req.Attempt, Token: req.Token}, req.Seq, req.Pieces, h.e.plane.q.Options().MaxBytes)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, hostapi.StatusResponse{Status: hostapi.JobStreamed})
}

// checkInferenceOutput refuses a result that is not an inference's.
func checkInferenceOutput(result []byte) (hostapi.InferenceOutput, error) {
	var out hostapi.InferenceOutput
	if err := json.Unmarshal(result, &out); err != nil {
		return out, fmt.Errorf("the result is not an inference result (JSON with text, usage and finish_reason): %v", err)
	}
	if out.Usage.PromptTokens < 0 || out.Usage.CompletionTokens < 0 {
		return out, errors.New("the result's usage counts negative tokens")
	}
	if out.FinishReason != "stop" && out.FinishReason != "length" {
		return out, fmt.Errorf("the result's finish_reason must be stop or length, got %q", out.FinishReason)
	}
	return out, nil
}

// failedInference is the error a worker's fail gives the waiting user.
func failedInference(class, msg string) error {
	if class == hostapi.ErrorClassBadRequest {
		return fmt.Errorf("%w: %s", executor.ErrBadRequest, msg)
	}
	return fmt.Errorf("%w: the worker failed the inference (%s): %s", executor.ErrUpstream, class, msg)
}
