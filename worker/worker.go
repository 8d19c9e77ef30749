// Package worker is `devshard worker`: a process that pulls jobs from one
// host's job manager over the worker routes (hostapi.Worker), runs them on
// its executors and pushes the results back (docs/workers.md).
//
// A worker runs as many claim loops as its executors have slots. Each
// loop claims with the long poll, runs the job, and meanwhile heartbeats
// it from a goroutine of its own, which nothing else the job does can
// starve. A lease the host no longer honours (the job was taken back,
// removed or finished elsewhere) cancels the run at once. An inference's
// output goes back as it comes (pieces), a validation's as one result.
package worker

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/signing"
)

// Task is one run asked of the executors.
type Task struct {
	Kind    string // hostapi.KindInference or "validation"
	Request executor.Request
}

// Runner runs tasks on the worker's executors. An error that carries a
// class (Classed) says what failed; ClassExecutorDied is a run lost with
// its executor, which the worker runs again elsewhere when it can.
type Runner interface {
	// Run runs t and hands onPieces its output's pieces in order, those
	// that came together in one call; last says the result came with
	// them (the run is over), so the worker need not send them before
	// its finish.
	Run(ctx context.Context, t Task, onPieces Pieces) (executor.Result, error)
	// Kinds are the job kinds some executor takes.
	Kinds() []string
	// Slots is how many jobs the executors run at once in all.
	Slots() int
}

// Pieces receives a run's output as it comes (Runner.Run).
type Pieces func(pieces []string, last bool) error

// EachPiece is onPieces as an executor's emit, one piece a call.
func EachPiece(onPieces Pieces) func(string) error {
	return func(p string) error { return onPieces([]string{p}, false) }
}

// Error classes a run's error may carry.
const (
	ClassExecution    = hostapi.ErrorClassExecution
	ClassBadRequest   = hostapi.ErrorClassBadRequest
	ClassExecutorDied = "executor_died"
)

// Classed is an error with a class.
type Classed interface {
	error
	Class() string
}

// ClassOf is the class of err: its own, or "execution".
func ClassOf(err error) string {
	var c Classed
	if errors.As(err, &c) && c.Class() != "" {
		return c.Class()
	}
	if errors.Is(err, executor.ErrBadRequest) {
		return ClassBadRequest
	}
	return ClassExecution
}

// Host is the host side a worker talks to: hostapi.Worker.
type Host interface {
	Claim(ctx context.Context, wait time.Duration, kinds ...string) (*hostapi.ClaimResponse, error)
	Heartbeat(ctx context.Context, lease hostapi.Lease) (time.Time, error)
	Pieces(ctx context.Context, lease hostapi.Lease, seq uint64, pieces []string) error
	Finish(ctx context.Context, lease hostapi.Lease, result []byte) error
	// FinishInference is Finish with an inference's last batch of pieces,
	// the seq-th (hostapi.FinishRequest).
	FinishInference(ctx context.Context, lease hostapi.Lease, seq uint64, pieces []string, result []byte) error
	Fail(ctx context.Context, lease hostapi.Lease, class, message string) error
}

// Config is a running worker's.
type Config struct {
	Host   Host
	Runner Runner
	Log    *slog.Logger
	// ClaimWait is one long poll's wait (default 25s, at most
	// hostapi.MaxClaimWait).
	ClaimWait time.Duration
	// Retries is how many more times a run lost with its executor is run
	// again before the job is failed (default 2). An inference that has
	// streamed a piece is never run again.
	Retries int
	// OnJob, if set, is told of every job's end: its kind and error (nil
	// when it finished).
	OnJob func(kind string, err error)
	// Registerer receives the worker's metrics (nil: none).
	Registerer prometheus.Registerer
}

// Worker pulls and runs jobs.
type Worker struct {
	cfg Config

	mu    sync.Mutex
	ran   map[string]int // jobs ended, by kind
	fails map[string]int // jobs failed, by class

	ended *prometheus.CounterVec // devshard_worker_jobs_total{kind, outcome}
}

// New returns a worker; Run starts it.
func New(cfg Config) (*Worker, error) {
	switch {
	case cfg.Host == nil:
		return nil, errors.New("worker: a host to pull jobs from is required")
	case cfg.Runner == nil:
		return nil, errors.New("worker: executors are required")
	case len(cfg.Runner.Kinds()) == 0 || cfg.Runner.Slots() < 1:
		return nil, errors.New("worker: no executor takes any job")
	}
	if cfg.ClaimWait <= 0 || cfg.ClaimWait > hostapi.MaxClaimWait {
		cfg.ClaimWait = 25 * time.Second
	}
	if cfg.Retries < 0 {
		cfg.Retries = 0
	} else if cfg.Retries == 0 {
		cfg.Retries = 2
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	w := &Worker{cfg: cfg, ran: map[string]int{}, fails: map[string]int{},
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devshard_worker_jobs_total",
			Help: "Jobs this worker ended, by kind and outcome: succeeded, failed (with a class, to the host), or lost (its lease, or the host's answer)."},
			[]string{"kind", "outcome"})}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(w.ended); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Run claims and runs jobs until ctx ends. A job running then is
// abandoned: its lease runs out and the host gives it to another worker.
// A host that refuses the worker's key (401) ends it at once with an error
// that says what to do: it will not accept the key by itself.
func (w *Worker) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for range w.cfg.Runner.Slots() {
		wg.Go(func() { w.loop(ctx, cancel) })
	}
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, ErrRefused) {
		return cause
	}
	return nil
}

// ErrRefused is a host that does not accept this worker's key.
var ErrRefused = errors.New("the host refuses this worker")

// Counts is how many jobs this worker ended, by kind, and how many of
// them it failed, by class.
func (w *Worker) Counts() (ran, failed map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ran, failed = map[string]int{}, map[string]int{}
	for k, v := range w.ran {
		ran[k] = v
	}
	for k, v := range w.fails {
		failed[k] = v
	}
	return ran, failed
}

// loop is one claim loop: a slot of the executors.
func (w *Worker) loop(ctx context.Context, stop context.CancelCauseFunc) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		c, err := w.cfg.Host.Claim(ctx, w.cfg.ClaimWait, w.cfg.Runner.Kinds()...)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var he *hostapi.Error
			if errors.As(err, &he) && he.Status == http.StatusUnauthorized {
				stop(fmt.Errorf("%w: %s (list this worker's account in the host's jobs.workers)", ErrRefused, he.Message))
				return
			}
			w.cfg.Log.Warn("claim failed; trying again", "err", err, "in", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if c != nil {
			w.job(ctx, c)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// job runs one claimed job under its heartbeat.
func (w *Worker) job(ctx context.Context, c *hostapi.ClaimResponse) {
	log := w.cfg.Log.With("job", shortID(c.Lease.JobID), "kind", c.Kind, "attempt", c.Lease.Attempt)
	run, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var beats sync.WaitGroup
	beats.Go(func() { w.heartbeat(run, cancel, c, log) })
	defer beats.Wait()
	defer cancel(nil) // stops the heartbeat before the wait above

	var err error
	switch c.Kind {
	case hostapi.KindInference:
		err = w.inference(run, c)
	case "validation":
		err = w.validation(run, c)
	default:
		err = w.cfg.Host.Fail(ctx, c.Lease, ClassBadRequest, fmt.Sprintf("this worker runs no %q jobs", c.Kind))
	}
	if cause := context.Cause(run); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause // the lease was lost: what the run did after is moot
	}
	w.mu.Lock()
	w.ran[c.Kind]++
	w.mu.Unlock()
	outcome := "succeeded"
	var failed *failedJob
	switch {
	case errors.As(err, &failed):
		outcome = "failed"
	case err != nil:
		outcome = "lost"
	}
	w.ended.WithLabelValues(c.Kind, outcome).Inc()
	if w.cfg.OnJob != nil {
		w.cfg.OnJob(c.Kind, err)
	}
	if err != nil && ctx.Err() == nil {
		log.Warn("job ended without a result", "err", err)
	}
}

// errLeaseLost cancels a run whose lease the host no longer honours.
var errLeaseLost = errors.New("the host no longer honours this job's lease")

// heartbeat keeps c's lease until run ends, beating at a third of the
// time the lease has left. A refusal (the job was taken back, removed or
// ended) cancels the run; a failure to reach the host is tried again
// until the lease would have run out.
func (w *Worker) heartbeat(run context.Context, cancel context.CancelCauseFunc, c *hostapi.ClaimResponse, log *slog.Logger) {
	expires := c.Expires
	for {
		every := max(time.Until(expires)/3, 50*time.Millisecond)
		if !sleep(run, every) {
			return
		}
		next, err := w.cfg.Host.Heartbeat(run, c.Lease)
		var he *hostapi.Error
		switch {
		case err == nil:
			expires = next
		case run.Err() != nil:
			return
		case errors.As(err, &he) && he.Status/100 == 4:
			log.Warn("lease lost; the run stops", "err", err)
			cancel(fmt.Errorf("%w: %v", errLeaseLost, err))
			return
		case time.Now().After(expires):
			log.Warn("lease ran out while the host was unreachable; the run stops", "err", err)
			cancel(fmt.Errorf("%w: %v", errLeaseLost, err))
			return
		default:
			log.Warn("heartbeat failed; trying again", "err", err)
		}
	}
}

// runTask runs t, again on a lost executor while retry allows.
func (w *Worker) runTask(ctx context.Context, t Task, onPieces Pieces, retry func() bool) (executor.Result, error) {
	for try := 0; ; try++ {
		res, err := w.cfg.Runner.Run(ctx, t, onPieces)
		if err == nil || ctx.Err() != nil || ClassOf(err) != ClassExecutorDied || try >= w.cfg.Retries || !retry() {
			return res, err
		}
		w.cfg.Log.Warn("the executor died mid-run; running the job again", "err", err, "try", try+2)
	}
}

func (w *Worker) fail(ctx context.Context, c *hostapi.ClaimResponse, class string, err error) error {
	w.mu.Lock()
	w.fails[class]++
	w.mu.Unlock()
	if ferr := w.cfg.Host.Fail(ctx, c.Lease, class, err.Error()); ferr != nil {
		return fmt.Errorf("%v; and the host refused the fail: %w", err, ferr)
	}
	return &failedJob{class, err}
}

// failedJob is a job the worker failed, and the host took the fail.
type failedJob struct {
	class string
	err   error
}

func (f *failedJob) Error() string { return f.class + ": " + f.err.Error() }
func (f *failedJob) Unwrap() error { return f.err }

// inference runs an inference job and streams its output to the host.
func (w *Worker) inference(ctx context.Context, c *hostapi.ClaimResponse) error {
	var in hostapi.InferenceInput
	if err := json.Unmarshal(c.Input, &in); err != nil {
		return w.fail(ctx, c, ClassBadRequest, fmt.Errorf("the job's input is not an inference: %v", err))
	}
	s := newStream(ctx, w.cfg.Host, c.Lease)
	res, err := w.runTask(ctx, Task{Kind: hostapi.KindInference, Request: in.Request}, s.add, s.empty)
	var (
		seq  uint64
		rest []string
	)
	if err == nil {
		seq, rest, err = s.last()
	} else {
		s.close()
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return w.fail(ctx, c, ClassOf(err), err)
	}
	out, err := json.Marshal(hostapi.InferenceOutput{Text: res.Text, Usage: res.Usage, FinishReason: res.FinishReason})
	if err != nil {
		return err
	}
	return w.cfg.Host.FinishInference(ctx, c.Lease, seq, rest, out)
}

// validation re-runs a peer's inference and returns what it produced; the
// host judges it.
func (w *Worker) validation(ctx context.Context, c *hostapi.ClaimResponse) error {
	var in hostapi.ValidationInput
	if err := json.Unmarshal(c.Input, &in); err != nil {
		return w.fail(ctx, c, ClassBadRequest, fmt.Errorf("the job's input is not a validation: %v", err))
	}
	run := ctx
	if in.TimeoutSeconds > 0 {
		var cancel context.CancelFunc
		run, cancel = context.WithTimeout(ctx, time.Duration(in.TimeoutSeconds)*time.Second)
		defer cancel()
	}
	res, err := w.runTask(run, Task{Kind: "validation", Request: in.Request}, func([]string, bool) error { return nil }, func() bool { return true })
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return w.fail(ctx, c, ClassOf(err), err)
	}
	h := res.ResponseHash()
	out, err := json.Marshal(hostapi.ValidationResult{ResponseHash: hex.EncodeToString(h[:]), Usage: res.Usage})
	if err != nil {
		return err
	}
	return w.cfg.Host.Finish(ctx, c.Lease, out)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// NewHost is the host at baseURL as a worker's Host, signing with key for
// the host's account and chain.
func NewHost(key signing.Signer, chainID, baseURL string, account signing.Address) Host {
	// A worker's calls all go to one host, as many at once as its claim
	// loops and their heartbeats: keep that many connections for reuse,
	// not the default two, past which each call dialled anew (a worker
	// of 16 loops opened a connection for about every second job).
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = t.MaxIdleConns
	return hostapi.NewWorker(key, chainID, baseURL, account, &http.Client{Transport: t, Timeout: hostapi.MaxClaimWait + 30*time.Second})
}
