package host

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/postgres"
	"github.com/devshard/devshard/jobs/sqlite"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store/boot"
)

// The job plane of the engine (docs/jobs.md). Every sampled validation is
// a job in the queue: the engine enqueues it, a worker (in process, or an
// external one over the worker routes, workerapi.go) claims and re-runs it, and
// once it has finished the engine turns its outcome into Validation votes
// (applyValidation). The votes are decided when the job finishes, from the
// session as it is then, so a job that outlives a restart still votes.

// inProcessWorkers is how many jobs the host runs at once in process, when
// no external worker is configured. A validation mostly waits (on the
// model, a remote executor, the queue's commits), and every sampled one
// must vote before the escrow settles, so they run wide, as they did
// before the queue.
const inProcessWorkers = 32

// inProcessWorker is the worker id of the host's own worker loops.
const inProcessWorker = "host/in-process"

// claimWait bounds one wait of an in-process worker for a job; it asks
// again after it.
const claimWait = 30 * time.Second

// jobPlane is the engine's queue and its bookkeeping: which validation
// jobs this engine awaits, so that each finished job votes once and Wait
// can tell when they are all done.
type jobPlane struct {
	q    *jobs.Queue
	owns bool // opened by the engine (in memory): closed by Close

	stop  context.CancelFunc
	loops sync.WaitGroup

	mu       sync.Mutex
	awaiting map[string]bool // job id → true while awaited, false while its outcome is being applied
	working  bool            // in-process workers run
	changed  chan struct{}   // closed and replaced when awaiting or working change
}

// SetJobs gives the engine its job queue once the daemon has opened it.
// Call it before MarkReady; without it, MarkReady opens a queue in memory.
func (e *Engine) SetJobs(q *jobs.Queue) { e.plane.q = q }

// Jobs is the engine's job queue; nil until MarkReady.
func (e *Engine) Jobs() *jobs.Queue { return e.plane.q }

// startJobs opens the queue if none was set, takes back the validations
// this host left unfinished (a restart), and starts the rescuer and, when
// no external worker is configured, the in-process workers.
func (e *Engine) startJobs() error {
	p := &e.plane
	if p.q == nil {
		d, err := sqlite.Open(context.Background(), ":memory:", sqlite.Options{})
		if err != nil {
			return err
		}
		// No other process writes this queue: every enqueue wakes the
		// claimers, and a poll would only cost.
		q, err := jobs.New(d, jobs.Options{PollInterval: claimWait, Volatile: jobs.IsInference,
			Registerer: e.cfg.Metrics.registerer(), OnError: e.rescueFailed})
		if err != nil {
			d.Close()
			return err
		}
		p.q, p.owns = q, true
	}
	ctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	pending, err := p.q.List(ctx, jobs.Filter{Detail: true})
	if err != nil {
		e.log.Warn("cannot list the unfinished jobs; validations begun before a restart may not vote", "err", err)
	}
	for _, j := range pending {
		if j.Kind == jobs.KindValidation && (j.State == jobs.Ready || j.State == jobs.Running) && e.isMine(j.Input) {
			p.await(j.ID)
		}
	}
	p.loops.Go(func() { _ = p.q.Run(ctx) })
	if len(e.cfg.Workers) == 0 {
		p.setWorking(true)
		for range inProcessWorkers {
			p.loops.Go(func() { e.work(ctx) })
		}
	}
	return nil
}

func (e *Engine) rescueFailed(err error) { e.log.Warn("job queue maintenance", "err", err) }

// Close stops the engine's job workers and its rescuer, and closes the
// queue if the engine opened it. A job running in process is abandoned,
// not failed: its lease expires and the job is retried, also after a
// restart.
func (e *Engine) Close() {
	p := &e.plane
	if p.stop == nil {
		return
	}
	p.stop()
	p.loops.Wait()
	p.setWorking(false)
	if p.owns {
		_ = p.q.Close()
	}
}

func (p *jobPlane) signal() {
	if p.changed != nil {
		close(p.changed)
	}
	p.changed = make(chan struct{})
}

func (p *jobPlane) setWorking(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.working = on
	p.signal()
}

func (p *jobPlane) await(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.awaiting == nil {
		p.awaiting = map[string]bool{}
	}
	p.awaiting[id] = true
	p.signal()
}

// settle takes id to apply its outcome and reports whether it was
// awaited: the one caller that settles a job applies it, then calls
// applied. Until then the job still counts as pending, so Wait returns
// only once its votes are pooled.
func (p *jobPlane) settle(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.awaiting[id] {
		return false
	}
	p.awaiting[id] = false
	return true
}

// applied forgets id, whose outcome has been applied.
func (p *jobPlane) applied(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.awaiting, id)
	p.signal()
}

// pending counts the jobs awaited or being applied, and lists those
// awaited; it says whether in-process workers run, and gives a channel
// closed at the next change.
func (p *jobPlane) pending() (n int, awaited []string, working bool, changed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed == nil {
		p.signal()
	}
	for id, waiting := range p.awaiting {
		if waiting {
			awaited = append(awaited, id)
		}
	}
	return len(p.awaiting), awaited, p.working, p.changed
}

// waitJobs blocks while in-process workers run and validations are
// awaited, collecting those that finished.
func (e *Engine) waitJobs() {
	for {
		e.collect(context.Background())
		n, _, working, changed := e.plane.pending()
		if n == 0 || !working {
			return
		}
		select {
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// collect applies the outcome of every awaited job that has finished: a
// worker of another host sharing the queue may have finished it, or the
// rescuer failed it.
func (e *Engine) collect(ctx context.Context) {
	if e.plane.q == nil {
		return
	}
	_, ids, _, _ := e.plane.pending()
	for _, id := range ids {
		e.jobDone(ctx, id)
	}
}

// isMine reports whether input is a validation this host enqueued.
func (e *Engine) isMine(input []byte) bool {
	var in hostapi.ValidationInput
	return json.Unmarshal(input, &in) == nil && in.Host == e.addr.String()
}

// enqueueValidation queues the re-run of r, a peer's inference. It runs
// with en.mu held and returns at once; the enqueue's durable write happens
// in the background.
func (e *Engine) enqueueValidation(en *entry, r *sessionpb.InferenceRecord) {
	if e.plane.q == nil {
		e.log.Error("cannot validate: the job queue is not open", "escrow", en.snap.EscrowId, "inference", r.Id)
		return
	}
	req, ok := en.requests[r.Id]
	if !ok {
		e.log.Warn("cannot validate: request payload unknown", "escrow", en.snap.EscrowId, "inference", r.Id)
		return
	}
	input, err := json.Marshal(hostapi.ValidationInput{
		Host: e.addr.String(), Escrow: en.snap.EscrowId, Inference: r.Id, Request: req,
		ResponseHash: hex.EncodeToString(r.ResponseHash), TokensUsed: r.TokensUsed,
		TimeoutSeconds: max(en.snap.ExecutionTimeoutSeconds, 1),
	})
	if err != nil {
		e.log.Error("encode a validation job", "escrow", en.snap.EscrowId, "inference", r.Id, "err", err)
		return
	}
	escrow, inference := en.snap.EscrowId, r.Id
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		ctx := context.Background()
		j, _, err := e.plane.q.Enqueue(ctx, jobs.KindValidation, input)
		if err != nil {
			e.log.Error("enqueue a validation", "escrow", escrow, "inference", inference, "err", err)
			return
		}
		e.plane.await(j.ID)
		// A job that finished already (the same re-run asked before, as
		// when a challenge follows the sampling) votes at once.
		e.jobDone(ctx, j.ID)
	}()
}

// jobDone applies the outcome of job id if it has finished and this engine
// awaits it; anything else is left alone.
func (e *Engine) jobDone(ctx context.Context, id string) {
	j, err := e.plane.q.Get(ctx, id)
	switch {
	case errors.Is(err, jobs.ErrNotFound):
		if e.plane.settle(id) {
			e.log.Warn("an awaited validation job was removed before it finished; it does not vote", "job", jobs.ShortID(id))
			e.plane.applied(id)
		}
		return
	case err != nil:
		e.log.Warn("read a finished job", "job", jobs.ShortID(id), "err", err)
		return
	case j.State != jobs.Succeeded && j.State != jobs.Failed:
		return
	}
	if !e.plane.settle(id) {
		return
	}
	defer e.plane.applied(id)
	if j.Kind == jobs.KindValidation {
		e.applyValidation(ctx, j)
	}
}

// applyValidation turns a finished validation job into this host's votes:
// valid when the re-run's response hash and token count match what the
// executor claimed, invalid when they differ or the re-run failed. A job
// failed for another reason (its lease expired MaxTry times) is no vote.
// The slots that vote are read from the session now: the sampled slots it
// holds while the inference is finished, every eligible slot once it is
// challenged.
func (e *Engine) applyValidation(ctx context.Context, j jobs.Job) {
	var in hostapi.ValidationInput
	if err := json.Unmarshal(j.Input, &in); err != nil || in.Host != e.addr.String() {
		return
	}
	var hash [32]byte
	valid := false
	switch {
	case j.State == jobs.Succeeded:
		var res hostapi.ValidationResult
		var raw []byte
		err := json.Unmarshal(j.Result, &res)
		if err == nil {
			raw, err = hex.DecodeString(res.ResponseHash)
		}
		if err != nil || len(raw) != len(hash) {
			e.log.Error("validation job result unreadable; no vote", "job", jobs.ShortID(j.ID), "err", err)
			return
		}
		copy(hash[:], raw)
		want, _ := hex.DecodeString(in.ResponseHash)
		valid = bytes.Equal(hash[:], want) && uint64(res.Usage.CompletionTokens)+uint64(res.Usage.PromptTokens) == in.TokensUsed
	case j.ErrorClass == hostapi.ErrorClassExecution:
		// The re-run failed: invalid, as a failed re-run has always voted.
	default:
		e.log.Warn("validation job failed; no vote", "escrow", in.Escrow, "inference", in.Inference, "class", j.ErrorClass, "err", j.Error)
		return
	}
	en, err := e.session(ctx, in.Escrow)
	if err != nil {
		e.log.Warn("validation finished for a session that cannot be loaded; no vote", "escrow", in.Escrow, "inference", in.Inference, "err", err)
		return
	}
	defer en.mu.Unlock()
	r, ok := en.s.Record(in.Inference)
	if !ok {
		return // sealed or timed out meanwhile
	}
	var slots []uint32
	switch r.Status {
	case sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED:
		for _, slot := range en.s.SampledSlots(r) {
			if en.holds(slot) {
				slots = append(slots, slot)
			}
		}
	case sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED:
		slots = e.eligibleSlots(en, r)
	}
	for _, slot := range slots {
		if voted(r.ValidVotes, slot) || voted(r.InvalidVotes, slot) {
			continue
		}
		vote := &sessionpb.Tx{Slot: slot, Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: r.Id, Valid: valid, ResponseHash: hash[:]}}}
		if err := e.signTx(en.snap, vote); err != nil {
			e.log.Error("sign validation", "err", err)
			return
		}
		if en.s.MayInclude(vote) {
			en.pool.add(vote, en.s.Nonce(), true)
		}
	}
	e.cfg.Metrics.validation(valid)
}

// work is one in-process worker: it claims a validation job, runs it, and
// claims the next, until ctx ends. The host runs inProcessWorkers of them,
// so their claims and finishes share the queue's commits.
func (e *Engine) work(ctx context.Context) {
	for {
		c, err := e.plane.q.ClaimWait(ctx, inProcessWorker, []jobs.Kind{jobs.KindValidation}, claimWait)
		switch {
		case ctx.Err() != nil || errors.Is(err, jobs.ErrClosed):
			return
		case err != nil:
			e.log.Warn("claim a job", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		case c != nil:
			e.runValidation(ctx, c)
		}
	}
}

// runValidation re-runs a claimed validation job with the host's executor,
// heartbeating while it runs, and finishes or fails it. If ctx ends first
// (the host is closing) the job is abandoned: its lease expires and it is
// retried.
func (e *Engine) runValidation(ctx context.Context, c *jobs.Claim) {
	q := e.plane.q
	var in hostapi.ValidationInput
	if err := json.Unmarshal(c.Job.Input, &in); err != nil {
		e.finishJob(ctx, c, q.Fail(ctx, c.Lease, "input", "the input is not a validation: "+err.Error()))
		return
	}
	run, cancel := context.WithTimeout(ctx, time.Duration(max(in.TimeoutSeconds, 1))*time.Second)
	defer cancel()
	beats := make(chan struct{})
	go func() {
		defer close(beats)
		t := time.NewTicker(q.Options().HeartbeatTimeout / 3)
		defer t.Stop()
		for {
			select {
			case <-run.Done():
				return
			case <-t.C:
				if _, err := q.Heartbeat(run, c.Lease); errors.Is(err, jobs.ErrStaleLease) {
					e.log.Warn("lost the lease of a running job; stopping it", "job", jobs.ShortID(c.Lease.JobID), "err", err)
					cancel()
					return
				}
			}
		}
	}()
	res, err := e.cfg.Executor.Execute(run, in.Request, func(string) error { return nil })
	cancel()
	<-beats
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		e.finishJob(ctx, c, q.Fail(ctx, c.Lease, hostapi.ErrorClassExecution, err.Error()))
		return
	}
	hash := res.ResponseHash()
	out, err := json.Marshal(hostapi.ValidationResult{ResponseHash: hex.EncodeToString(hash[:]), Usage: res.Usage})
	if err != nil {
		e.finishJob(ctx, c, q.Fail(ctx, c.Lease, "result", err.Error()))
		return
	}
	e.finishJob(ctx, c, q.Finish(ctx, c.Lease, out))
}

// finishJob applies a job its worker just finished, or logs why the
// finish was refused (a stale lease: the retry's result stands).
func (e *Engine) finishJob(ctx context.Context, c *jobs.Claim, err error) {
	if err != nil {
		e.log.Warn("finish a job", "job", jobs.ShortID(c.Lease.JobID), "err", err)
		return
	}
	e.jobDone(ctx, c.Lease.JobID)
}

// jobOrigin is the escrow and inference a validation job re-runs or an
// inference job runs; zero
// for other kinds.
func jobOrigin(j jobs.Job) (escrow, inference uint64) {
	// Both kinds' inputs name the escrow and the inference alike.
	if j.Kind != jobs.KindValidation && !jobs.IsInference(j.Kind) {
		return 0, 0
	}
	var in struct {
		Escrow    uint64 `json:"escrow"`
		Inference uint64 `json:"inference"`
	}
	if json.Unmarshal(j.Input, &in) != nil {
		return 0, 0
	}
	return in.Escrow, in.Inference
}

// registerer is where the job queue's metrics go: the host's registry.
func (m *Metrics) registerer() prometheus.Registerer {
	if m == nil {
		return nil
	}
	return m.Registry
}

// openJobs opens the daemon's job queue where its storage is: a schema of
// its Postgres (jobs/postgres) when it stores in Postgres alone, else the
// SQLite file jobs.db in the storage directory. A hybrid host keeps its
// queue local, as its fallback keeps its sessions, so validations go on
// while Postgres is away. Inference jobs are volatile: kept in the
// queue's memory, since the user's stream they serve dies with this
// process anyway (docs/jobs.md).
func openJobs(ctx context.Context, cfg DaemonConfig, mode boot.Mode, reg prometheus.Registerer) (*jobs.Queue, error) {
	var d jobs.Driver
	var err error
	if mode == boot.Postgres {
		d, err = postgres.Open(ctx, postgres.Config{}) // the PG* variables, as the store's
	} else {
		d, err = sqlite.Open(ctx, filepath.Join(cfg.Storage.Dir, sqlite.FileName), sqlite.Options{Synchronous: cfg.Storage.Synchronous})
	}
	if err != nil {
		return nil, fmt.Errorf("open the job queue: %w", err)
	}
	log := cfg.Logger
	q, err := jobs.New(d, jobs.Options{
		HeartbeatTimeout: cfg.Jobs.HeartbeatTimeout, MaxTry: cfg.Jobs.MaxTry, Lifetime: cfg.Jobs.Lifetime,
		Volatile: jobs.IsInference, Registerer: reg, OnError: func(err error) { log.Warn("job queue maintenance", "err", err) },
	})
	if err != nil {
		d.Close()
		return nil, err
	}
	return q, nil
}
