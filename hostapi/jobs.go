package hostapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/signing"
)

// The worker routes of the job plane (docs/jobs.md). A worker signs every
// request (package httpauth) with its own key, for the host and the chain;
// the host admits only the worker keys its operator lists, and answers any
// other signer 401, changing nothing.
var (
	// ClaimJob waits up to the request's wait for a job and answers 200
	// with a ClaimResponse, or 204 when none became ready in time.
	ClaimJob = Route{"POST", "/v1/jobs/claim"}
	// HeartbeatJob extends the lease of a running job.
	HeartbeatJob = Route{"POST", "/v1/jobs/{job}/heartbeat"}
	// FinishJob stores a running job's result.
	FinishJob = Route{"POST", "/v1/jobs/{job}/finish"}
	// FailJob fails a running job with an error class and a message.
	FailJob = Route{"POST", "/v1/jobs/{job}/fail"}
	// JobPieces carries the next pieces of a running inference job's
	// output, which the host forwards to the waiting user at once.
	JobPieces = Route{"POST", "/v1/jobs/{job}/pieces"}
)

// WorkerRoutes lists the worker routes, in the order docs/host.md gives
// them.
func WorkerRoutes() []Route { return []Route{ClaimJob, HeartbeatJob, JobPieces, FinishJob, FailJob} }

// ForJob is the route's path for job id.
func (r Route) ForJob(id string) string {
	return strings.Replace(r.Path, "{job}", url.PathEscape(id), 1)
}

// MaxClaimWait bounds how long one claim waits for a job; a worker asks
// again after it.
const MaxClaimWait = 30 * time.Second

// ClaimRequest is the body of POST /v1/jobs/claim.
type ClaimRequest struct {
	// Kinds are the job kinds the worker runs; empty: any kind.
	Kinds []string `json:"kinds,omitempty"`
	// WaitMS is how long to wait for a job, in milliseconds: 0 answers at
	// once, at most MaxClaimWait.
	WaitMS int64 `json:"wait_ms"`
}

// Lease is a running job's lease: every heartbeat, finish and fail names
// the job in its path and presents the attempt and the token.
type Lease struct {
	JobID   string `json:"job_id"`
	Attempt int    `json:"attempt"`
	Token   string `json:"token"`
}

// ClaimResponse answers a claim that got a job.
type ClaimResponse struct {
	Lease Lease `json:"lease"`
	// Expires is when the lease lapses unless the worker heartbeats.
	Expires time.Time `json:"expires"`
	Kind    string    `json:"kind"`
	// Input is the job's canonical input: for a validation job, a
	// ValidationInput in JSON.
	Input []byte `json:"input"`
}

// HeartbeatRequest is the body of POST /v1/jobs/{job}/heartbeat.
type HeartbeatRequest struct {
	Attempt int    `json:"attempt"`
	Token   string `json:"token"`
}

// HeartbeatResponse answers an accepted heartbeat.
type HeartbeatResponse struct {
	Expires time.Time `json:"expires"`
}

// FinishRequest is the body of POST /v1/jobs/{job}/finish. Result is the
// job's result: for a validation job, a ValidationResult in JSON.
//
// An inference's finish may carry its last batch of pieces, numbered Seq
// as a PiecesRequest would be: the host takes the batch as the pieces
// route does (the claim's lease only, in order, a batch taken already
// forwarding nothing), after checking that Result's text is every piece
// joined, this batch's too, and then finishes the job. A short answer so
// costs a claim and a finish, and a long one a pieces call fewer.
type FinishRequest struct {
	Attempt int      `json:"attempt"`
	Token   string   `json:"token"`
	Result  []byte   `json:"result"`
	Seq     uint64   `json:"seq,omitempty"`
	Pieces  []string `json:"pieces,omitempty"`
}

// FailRequest is the body of POST /v1/jobs/{job}/fail. Class is a short
// label ("execution": the executor failed running the input); Message is a
// sentence for the operator.
type FailRequest struct {
	Attempt int    `json:"attempt"`
	Token   string `json:"token"`
	Class   string `json:"class"`
	Message string `json:"message"`
}

// JobFinished and JobFailed are the StatusResponse of an accepted finish
// and fail, with 200.
const (
	JobFinished = "succeeded"
	JobFailed   = "failed"
)

// ErrorClassExecution is the class of a job failed because its executor
// could not run the input. A validation job failed so counts as an invalid
// answer, as a failed re-run always has.
const ErrorClassExecution = "execution"

// ErrorClassBadRequest is the class of an inference job whose request no
// executor can run (a parameter out of range, say): the user's fault, not
// the worker's, and the user is told so.
const ErrorClassBadRequest = "bad_request"

// KindInference is the kind a worker names in its claim to run inferences.
// The host hands it its own inference jobs only (jobs.InferenceFor), and
// the claim answers with this kind.
const KindInference = "inference"

// InferenceInput is the input of an inference job: a request this host
// must execute, streamed back through JobPieces as it runs.
type InferenceInput struct {
	Host      string           `json:"host"` // the account of the host that executes (hex)
	Escrow    uint64           `json:"escrow"`
	Inference uint64           `json:"inference"`
	Request   executor.Request `json:"request"`
}

// InferenceOutput is the result of an inference job. Text must be the
// pieces sent through JobPieces (and the finish's own, FinishRequest),
// joined; a worker that sent none may send the whole text here, and the
// host forwards it at once.
type InferenceOutput struct {
	Text         string         `json:"text"`
	Usage        executor.Usage `json:"usage"`
	FinishReason string         `json:"finish_reason"`
}

// PiecesRequest is the body of POST /v1/jobs/{job}/pieces. Seq numbers the
// calls of one attempt from 0; the host takes them in order, and a call it
// has taken already (a retry after a lost reply) is answered 200 again and
// forwards nothing twice.
type PiecesRequest struct {
	Attempt int      `json:"attempt"`
	Token   string   `json:"token"`
	Seq     uint64   `json:"seq"`
	Pieces  []string `json:"pieces"`
}

// JobStreamed is the StatusResponse of accepted pieces, with 200.
const JobStreamed = "streamed"

// ValidationInput is the canonical input of a validation job: a peer's
// inference to re-run, and what it claimed, to judge the re-run against.
// Its JSON encoding is the job's input, so the same validation is one job.
type ValidationInput struct {
	// Host is the account of the host that validates (hex): hosts sharing
	// one queue each run their own validations.
	Host      string           `json:"host"`
	Escrow    uint64           `json:"escrow"`
	Inference uint64           `json:"inference"`
	Request   executor.Request `json:"request"`
	// ResponseHash (hex) and TokensUsed are what the executor's
	// FinishInference claimed.
	ResponseHash string `json:"response_hash"`
	TokensUsed   uint64 `json:"tokens_used"`
	// TimeoutSeconds bounds the re-run: the escrow's execution timeout.
	TimeoutSeconds uint64 `json:"timeout_seconds"`
}

// ValidationResult is the result of a validation job: what the re-run
// produced. The host judges it against the ValidationInput.
type ValidationResult struct {
	ResponseHash string         `json:"response_hash"` // hex SHA-256 of the text
	Usage        executor.Usage `json:"usage"`
}

// Worker calls a host's worker routes, signed by the worker's key. It is
// safe for concurrent use.
type Worker struct {
	c       *Client
	baseURL string
	host    signing.Address
}

// NewWorker returns a worker client for the host of account host at
// baseURL on chain chainID, signing with key. hc's Timeout must exceed the
// longest claim wait asked for.
func NewWorker(key signing.Signer, chainID, baseURL string, host signing.Address, hc *http.Client) *Worker {
	return &Worker{c: NewClient(key, chainID, hc), baseURL: baseURL, host: host}
}

// Claim waits up to wait for a job of kinds (any if none) and returns it,
// or nil when none became ready in time.
func (w *Worker) Claim(ctx context.Context, wait time.Duration, kinds ...string) (*ClaimResponse, error) {
	body, err := json.Marshal(ClaimRequest{Kinds: kinds, WaitMS: wait.Milliseconds()})
	if err != nil {
		return nil, err
	}
	var out ClaimResponse
	got, err := w.c.send(ctx, ClaimJob, w.baseURL, ClaimJob.Path, w.host, body, &out)
	if err != nil || !got {
		return nil, err
	}
	return &out, nil
}

// Heartbeat extends lease and returns its new expiry.
func (w *Worker) Heartbeat(ctx context.Context, lease Lease) (time.Time, error) {
	body, err := json.Marshal(HeartbeatRequest{Attempt: lease.Attempt, Token: lease.Token})
	if err != nil {
		return time.Time{}, err
	}
	var out HeartbeatResponse
	_, err = w.c.send(ctx, HeartbeatJob, w.baseURL, HeartbeatJob.ForJob(lease.JobID), w.host, body, &out)
	return out.Expires, err
}

// Finish stores the result of the job lease holds.
func (w *Worker) Finish(ctx context.Context, lease Lease, result []byte) error {
	body, err := json.Marshal(FinishRequest{Attempt: lease.Attempt, Token: lease.Token, Result: result})
	if err != nil {
		return err
	}
	var out StatusResponse
	_, err = w.c.send(ctx, FinishJob, w.baseURL, FinishJob.ForJob(lease.JobID), w.host, body, &out)
	return err
}

// FinishInference stores the result of the inference job lease holds,
// with its last batch of pieces, the seq-th (FinishRequest).
func (w *Worker) FinishInference(ctx context.Context, lease Lease, seq uint64, pieces []string, result []byte) error {
	body, err := json.Marshal(FinishRequest{Attempt: lease.Attempt, Token: lease.Token, Result: result, Seq: seq, Pieces: pieces})
	if err != nil {
		return err
	}
	var out StatusResponse
	_, err = w.c.send(ctx, FinishJob, w.baseURL, FinishJob.ForJob(lease.JobID), w.host, body, &out)
	return err
}

// Pieces sends the seq-th batch of pieces of the inference job lease
// holds.
func (w *Worker) Pieces(ctx context.Context, lease Lease, seq uint64, pieces []string) error {
	body, err := json.Marshal(PiecesRequest{Attempt: lease.Attempt, Token: lease.Token, Seq: seq, Pieces: pieces})
	if err != nil {
		return err
	}
	var out StatusResponse
	_, err = w.c.send(ctx, JobPieces, w.baseURL, JobPieces.ForJob(lease.JobID), w.host, body, &out)
	return err
}

// Fail fails the job lease holds with class and message.
func (w *Worker) Fail(ctx context.Context, lease Lease, class, message string) error {
	body, err := json.Marshal(FailRequest{Attempt: lease.Attempt, Token: lease.Token, Class: class, Message: message})
	if err != nil {
		return err
	}
	var out StatusResponse
	_, err = w.c.send(ctx, FailJob, w.baseURL, FailJob.ForJob(lease.JobID), w.host, body, &out)
	return err
}
