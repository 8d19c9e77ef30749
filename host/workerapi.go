package host

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/signing"
)

// The worker routes (hostapi.WorkerRoutes): external workers claim jobs,
// heartbeat, and finish or fail them. Each request is signed (package
// httpauth) for this host and chain by a worker key the operator lists
// (Config.Workers); anything else is 401 and changes nothing.

type workerHandler func(w http.ResponseWriter, r *http.Request, worker signing.Address, body []byte)

// worker admits a request signed by an accepted worker and hands on the
// verified body.
func (h *handler) worker(next workerHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.e.Ready() || h.e.plane.q == nil {
			writeError(w, http.StatusServiceUnavailable, hostapi.Initializing)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, hostapi.MaxBody)
		who, body, err := httpauth.Verify(r, h.e.audience(), hostapi.MaxBody, time.Now())
		switch {
		case bodyRefused(w, err):
			return
		case err != nil:
			writeError(w, http.StatusUnauthorized, fmt.Sprintf("%s %s needs a request signed by a worker key this host accepts, for host %s on chain %q: %v", r.Method, r.URL.Path, h.e.addr, h.e.cfg.ChainID, err))
			return
		case len(h.e.cfg.Workers) == 0:
			writeError(w, http.StatusUnauthorized, fmt.Sprintf("worker %s refused: this host accepts no workers (it runs its jobs in process); list the worker's account in jobs.workers", who))
			return
		case !slices.Contains(h.e.cfg.Workers, who):
			writeError(w, http.StatusUnauthorized, fmt.Sprintf("worker %s refused: it is not among the worker accounts this host accepts (jobs.workers)", who))
			return
		}
		next(w, r, who, body)
	}
}

// decodeStrict decodes a JSON body, refusing unknown fields, and answers
// 400 when it does not.
func decodeStrict(w http.ResponseWriter, body []byte, v any) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

func (h *handler) claimJob(w http.ResponseWriter, r *http.Request, worker signing.Address, body []byte) {
	var req hostapi.ClaimRequest
	if !decodeStrict(w, body, &req) {
		return
	}
	wait := time.Duration(req.WaitMS) * time.Millisecond
	if req.WaitMS < 0 || wait > hostapi.MaxClaimWait {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("wait_ms must be 0 to %d, got %d", hostapi.MaxClaimWait.Milliseconds(), req.WaitMS))
		return
	}
	kinds, err := h.e.claimKinds(req.Kinds)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	deadline := time.Now().Add(wait)
	for {
		c, err := h.e.plane.q.ClaimWait(r.Context(), worker.String(), kinds, time.Until(deadline))
		switch {
		case err != nil:
			h.jobFail(w, err)
		case c == nil:
			w.WriteHeader(http.StatusNoContent)
		case jobs.IsInference(c.Job.Kind) && !h.e.claimedInference(c):
			// Nobody waits for its output any more: it is not run.
			if err := h.e.plane.q.Fail(r.Context(), c.Lease, "abandoned", errStreamGone.Error()); err != nil {
				h.e.log.Warn("cannot fail an abandoned inference job", "job", jobs.ShortID(c.Lease.JobID), "err", err)
			}
			continue
		default:
			kind := string(c.Job.Kind)
			if jobs.IsInference(c.Job.Kind) {
				kind = hostapi.KindInference
			}
			h.e.log.Info("job claimed", "job", jobs.ShortID(c.Lease.JobID), "kind", kind, "attempt", c.Lease.Attempt, "worker", worker)
			writeJSON(w, http.StatusOK, hostapi.ClaimResponse{
				Lease:   hostapi.Lease{JobID: c.Lease.JobID, Attempt: c.Lease.Attempt, Token: c.Lease.Token},
				Expires: c.Expires, Kind: kind, Input: c.Job.Input,
			})
		}
		return
	}
}

// claimKinds maps the kinds a worker asks for to the queue's. "inference"
// is this host's own inference kind (jobs.InferenceFor): a worker never
// gets the inference of another host sharing the queue, whose user waits
// on that host. No kinds asks for this host's inferences and validations.
func (e *Engine) claimKinds(asked []string) ([]jobs.Kind, error) {
	if len(asked) == 0 {
		return []jobs.Kind{e.inferenceKind(), jobs.KindValidation}, nil
	}
	kinds := make([]jobs.Kind, len(asked))
	for i, k := range asked {
		switch {
		case k == hostapi.KindInference:
			kinds[i] = e.inferenceKind()
		case jobs.IsInference(jobs.Kind(k)):
			return nil, fmt.Errorf("kind %q: ask for %q; the host hands a worker its own inferences", k, hostapi.KindInference)
		default:
			kinds[i] = jobs.Kind(k)
		}
	}
	return kinds, nil
}

// jobID is the {job} of a worker route: 64 hex digits, or 400.
func jobID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("job")
	if b, err := hex.DecodeString(id); err != nil || len(b) != 32 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("job id %q is not 64 hex digits", id))
		return "", false
	}
	return id, true
}

func (h *handler) heartbeatJob(w http.ResponseWriter, r *http.Request, _ signing.Address, body []byte) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	var req hostapi.HeartbeatRequest
	if !decodeStrict(w, body, &req) {
		return
	}
	lease := jobs.Lease{JobID: id, Attempt: req.Attempt, Token: req.Token}
	expires, err := h.e.plane.q.Heartbeat(r.Context(), lease)
	if err != nil {
		h.jobFail(w, err)
		return
	}
	if st := h.e.streams.get(id); st != nil {
		st.heartbeat(lease, expires)
	}
	writeJSON(w, http.StatusOK, hostapi.HeartbeatResponse{Expires: expires})
}

func (h *handler) finishJob(w http.ResponseWriter, r *http.Request, worker signing.Address, body []byte) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	var req hostapi.FinishRequest
	if !decodeStrict(w, body, &req) {
		return
	}
	// Size first: an oversized result is refused as such, whatever it holds.
	if limit := h.e.plane.q.Options().MaxBytes; len(req.Result) > limit {
		h.jobFail(w, &jobs.TooLargeError{What: "result", Size: len(req.Result), Limit: limit})
		return
	}
	j, err := h.e.plane.q.Get(r.Context(), id)
	if err != nil {
		h.jobFail(w, err)
		return
	}
	if err := checkResult(j.Kind, req.Result); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("job %s: %v", jobs.ShortID(id), err))
		return
	}
	if len(req.Pieces) > 0 && !jobs.IsInference(j.Kind) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("job %s is a %s job: only an inference's finish carries pieces", jobs.ShortID(id), j.Kind))
		return
	}
	lease := jobs.Lease{JobID: id, Attempt: req.Attempt, Token: req.Token}
	st := h.e.streams.get(id)
	var out hostapi.InferenceOutput
	if st != nil {
		out, _ = checkInferenceOutput(req.Result) // checked by checkResult
		// The last pieces reach the user before the job is finished, as
		// through the pieces route, fenced by the same lease and seq.
		if status, err := st.finishing(lease, req.Seq, req.Pieces, out, h.e.plane.q.Options().MaxBytes); err != nil {
			writeError(w, status, fmt.Sprintf("job %s: %v", jobs.ShortID(id), err))
			return
		}
	}
	if err := h.e.plane.q.Finish(r.Context(), lease, req.Result); err != nil {
		h.jobFail(w, err)
		return
	}
	if st != nil {
		st.end(out, nil)
	}
	h.e.log.Info("job finished", "job", jobs.ShortID(id), "kind", j.Kind, "worker", worker)
	h.e.jobDone(r.Context(), id)
	writeJSON(w, http.StatusOK, hostapi.StatusResponse{Status: hostapi.JobFinished})
}

func (h *handler) failJob(w http.ResponseWriter, r *http.Request, worker signing.Address, body []byte) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	var req hostapi.FailRequest
	if !decodeStrict(w, body, &req) {
		return
	}
	if err := h.e.plane.q.Fail(r.Context(), jobs.Lease{JobID: id, Attempt: req.Attempt, Token: req.Token}, req.Class, req.Message); err != nil {
		h.jobFail(w, err)
		return
	}
	if st := h.e.streams.get(id); st != nil {
		st.end(hostapi.InferenceOutput{}, failedInference(req.Class, req.Message))
	}
	h.e.log.Info("job failed by its worker", "job", jobs.ShortID(id), "worker", worker, "class", req.Class, "err", req.Message)
	h.e.jobDone(r.Context(), id)
	writeJSON(w, http.StatusOK, hostapi.StatusResponse{Status: hostapi.JobFailed})
}

// checkResult refuses a result that is not what a job of kind produces.
func checkResult(kind jobs.Kind, result []byte) error {
	if jobs.IsInference(kind) {
		_, err := checkInferenceOutput(result)
		return err
	}
	if kind != jobs.KindValidation {
		return nil
	}
	var res hostapi.ValidationResult
	if err := json.Unmarshal(result, &res); err != nil {
		return fmt.Errorf("the result is not a validation result (JSON with response_hash and usage): %v", err)
	}
	if b, err := hex.DecodeString(res.ResponseHash); err != nil || len(b) != 32 {
		return fmt.Errorf("the result's response_hash %q is not 64 hex digits", res.ResponseHash)
	}
	if res.Usage.PromptTokens < 0 || res.Usage.CompletionTokens < 0 {
		return errors.New("the result's usage counts negative tokens")
	}
	return nil
}

// jobFail maps a queue error to a status and its sentence: an unknown job
// 404, a stale lease or a wrong state 409, too large 413, a malformed
// argument 400.
func (h *handler) jobFail(w http.ResponseWriter, err error) {
	var stale *jobs.StaleLeaseError
	status := http.StatusInternalServerError
	switch {
	case errors.As(err, &stale) && !stale.Exists, errors.Is(err, jobs.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, jobs.ErrStaleLease), errors.Is(err, jobs.ErrWrongState):
		status = http.StatusConflict
	case errors.Is(err, jobs.ErrTooLarge):
		status = http.StatusRequestEntityTooLarge
	case errors.Is(err, jobs.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, jobs.ErrClosed):
		status = http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled):
		// The worker hung up (a long poll it gave up, a worker stopping):
		// nobody reads the answer, and it is no fault of the host's.
		status = http.StatusServiceUnavailable
	}
	if status == http.StatusInternalServerError {
		h.e.log.Error("job request failed", "err", err)
	}
	writeError(w, status, err.Error())
}
