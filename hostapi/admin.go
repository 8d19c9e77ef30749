package hostapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
)

// The admin routes: the operator's view of the job queue, served on the
// host's admin listener (local only by default), never on its public API.
// Every request carries the admin token (AdminTokenHeader).
var (
	// AdminListJobs lists the ready, running and failed jobs; with
	// ?all=true, succeeded ones too.
	AdminListJobs = Route{"GET", "/admin/v1/jobs"}
	// AdminGetJob shows one job whole, with its input and outcome.
	AdminGetJob = Route{"GET", "/admin/v1/jobs/{job}"}
	// AdminResetJobs makes failed jobs ready again.
	AdminResetJobs = Route{"POST", "/admin/v1/jobs/reset"}
	// AdminRemoveJobs deletes jobs in any state.
	AdminRemoveJobs = Route{"POST", "/admin/v1/jobs/remove"}
	// AdminRemoveAllJobs deletes every job, in one transaction, when the
	// body confirms it.
	AdminRemoveAllJobs = Route{"POST", "/admin/v1/jobs/remove-all"}
)

// AdminRoutes lists the admin routes, in the order docs/jobs.md gives them.
func AdminRoutes() []Route {
	return []Route{AdminListJobs, AdminGetJob, AdminResetJobs, AdminRemoveJobs, AdminRemoveAllJobs}
}

// ParamAll is AdminListJobs' query parameter: "true" lists every job.
const ParamAll = "all"

// AdminTokenHeader carries "Bearer <token>": the token the host wrote to
// its admin file (mode 0600) at start. OperatorHeader names who
// asks, as the operator's tool tells it, for the host's log.
const (
	AdminTokenHeader = "Authorization"
	OperatorHeader   = "X-Devshard-Operator"
)

// AdminFile is what a host writes to its admin file (mode 0600) at start:
// where its admin endpoint listens and the token it takes until the next
// start. An operator's tool on the same machine reads it.
type AdminFile struct {
	URL   string `json:"url"`
	Token string `json:"token"`
}

// RemoveAllConfirm is the Confirm an AdminRemoveAllJobs must carry.
const RemoveAllConfirm = "remove every job"

// JobIDsRequest is the body of AdminResetJobs and AdminRemoveJobs. An id
// may be the full id or a prefix of at least 8 hex digits that names one
// job.
type JobIDsRequest struct {
	IDs []string `json:"ids"`
}

// RemoveAllRequest is the body of AdminRemoveAllJobs.
type RemoveAllRequest struct {
	Confirm string `json:"confirm"`
}

// JobsChangedResponse answers a reset or a removal: the full ids it
// changed.
type JobsChangedResponse struct {
	IDs   []string `json:"ids,omitempty"`
	Count int      `json:"count"`
}

// JobsResponse answers AdminListJobs, oldest first.
type JobsResponse struct {
	Jobs []JobView `json:"jobs"`
}

// JobView is a job as the operator sees it. Escrow and Inference are read
// from a validation or inference job's input (0 for other kinds). Input and Result are
// only in AdminGetJob's answer. Times are zero when they have not happened.
type JobView struct {
	ID           string    `json:"id"`
	Kind         string    `json:"kind"`
	State        string    `json:"state"`
	Attempt      int       `json:"attempt"`
	Worker       string    `json:"worker,omitempty"`
	Escrow       uint64    `json:"escrow,omitempty"`
	Inference    uint64    `json:"inference,omitempty"`
	Created      time.Time `json:"created"`
	Started      time.Time `json:"started"`
	Heartbeat    time.Time `json:"heartbeat"`
	Finished     time.Time `json:"finished"`
	LeaseExpires time.Time `json:"lease_expires"`
	ErrorClass   string    `json:"error_class,omitempty"`
	Error        string    `json:"error,omitempty"`
	Input        []byte    `json:"input,omitempty"`
	Result       []byte    `json:"result,omitempty"`
}

// Admin calls a host's admin routes with its admin token.
type Admin struct {
	BaseURL  string
	Token    string
	Operator string // who asks, for the host's log
	HTTP     *http.Client
}

// List returns the jobs; all adds the succeeded ones.
func (a *Admin) List(ctx context.Context, all bool) ([]JobView, error) {
	path := AdminListJobs.Path
	if all {
		path += "?" + ParamAll + "=true"
	}
	var out JobsResponse
	return out.Jobs, a.do(ctx, AdminListJobs.Method, path, nil, &out)
}

// Get returns one job whole; id may be a unique prefix.
func (a *Admin) Get(ctx context.Context, id string) (JobView, error) {
	var out JobView
	return out, a.do(ctx, AdminGetJob.Method, AdminGetJob.ForJob(id), nil, &out)
}

// Reset makes the failed jobs ids ready again, all or none.
func (a *Admin) Reset(ctx context.Context, ids []string) (JobsChangedResponse, error) {
	var out JobsChangedResponse
	return out, a.do(ctx, AdminResetJobs.Method, AdminResetJobs.Path, JobIDsRequest{IDs: ids}, &out)
}

// Remove deletes the jobs ids, all or none.
func (a *Admin) Remove(ctx context.Context, ids []string) (JobsChangedResponse, error) {
	var out JobsChangedResponse
	return out, a.do(ctx, AdminRemoveJobs.Method, AdminRemoveJobs.Path, JobIDsRequest{IDs: ids}, &out)
}

// RemoveAll deletes every job and returns how many there were.
func (a *Admin) RemoveAll(ctx context.Context) (int, error) {
	var out JobsChangedResponse
	err := a.do(ctx, AdminRemoveAllJobs.Method, AdminRemoveAllJobs.Path, RemoveAllRequest{Confirm: RemoveAllConfirm}, &out)
	return out.Count, err
}

func (a *Admin) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	base := strings.TrimSuffix(a.BaseURL, "/")
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set(AdminTokenHeader, "Bearer "+a.Token)
	if a.Operator != "" {
		req.Header.Set(OperatorHeader, a.Operator)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := a.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return &Error{URL: base, Message: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readError(base, resp)
	}
	if err := json.NewDecoder(bounded(resp.Body, maxAnswer)).Decode(out); err != nil {
		var tl *tooLargeError
		if errors.As(err, &tl) {
			return &Error{URL: base, Status: http.StatusBadGateway, Message: "answer refused: " + tl.Error()}
		}
		return &Error{URL: base, Status: resp.StatusCode, Message: "undecodable answer: " + err.Error()}
	}
	return nil
}
