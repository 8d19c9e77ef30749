package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/sqlite"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/worker"
)

type benchWorkersOptions struct {
	rounds, samples, jobs int
	// exe is the devshard binary the executor children run.
	exe string
}

func newBenchWorkersCommand() *cobra.Command {
	var o benchWorkersOptions
	cmd := &cobra.Command{
		Use:   "workers",
		Short: "Job plane: latency a worker and an executor child add to an inference, jobs/s through one worker",
		Long: `workers measures the job plane on loopback (docs/workers.md): a host engine
with a SQLite job queue (synchronous=FULL, as a host's jobs.db) served over
HTTP, and real workers with real 'devshard executor builtin' children
(this binary). The model is the built-in one, with no think time and
max_tokens 16, so the figures are the plumbing's, not the model's.

  - Added latency: from asking the host to run an inference
    (host.Engine.RunInference, the run a diff starts) until its last piece
    arrives, on a host that runs it in process (executor.Builtin) and on a
    host with jobs.inference, whose inference goes through the queue to a
    worker with one child and back through the pieces route or with the
    finish. --samples
    inferences a round, the two hosts in turn; p50 and p99 of each, and
    the worker's minus the in-process one.
  - Throughput: --jobs validation jobs (of another host's inferences, so
    no vote follows) enqueued before the clock starts, then a worker with
    four children, each taking 4 at once, drains them: jobs/s until the
    worker has finished the last one.

Each figure is measured --rounds times, interleaved, and the median kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.rounds < 1 || o.samples < 1 || o.jobs < 1 {
				return fmt.Errorf("--rounds, --samples and --jobs must be at least 1, got %d, %d and %d", o.rounds, o.samples, o.jobs)
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding this devshard binary for the executor children to run: %w", err)
			}
			o.exe = exe
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return benchWorkers(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	cmd.Flags().IntVar(&o.rounds, "rounds", 3, "measure each figure this many times, interleaved, and keep the median")
	cmd.Flags().IntVar(&o.samples, "samples", 200, "inferences per latency measurement, on each host")
	cmd.Flags().IntVar(&o.jobs, "jobs", 1000, "validation jobs the worker drains per round")
	return cmd
}

// addedLatencyTarget is the most a worker and an executor child may add
// to an inference's p50 (issue 21).
const addedLatencyTarget = time.Millisecond

// workerBenchChain is the chain the bench's host serves on.
const workerBenchChain = "devshard-bench"

// benchRequest is the inference every sample runs: the built-in model's
// 16 tokens, no think time.
var benchRequest = executor.Request{Model: executor.BuiltinModel, MaxTokens: 16,
	Messages: []executor.Message{{Role: "user", Content: "how long does the plumbing take?"}}}

func benchWorkers(ctx context.Context, out, progress io.Writer, o benchWorkersOptions) error {
	dir, err := os.MkdirTemp("", "devshard-bench-workers-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// Errors only: a worker's claims cancelled at its stop, and children
	// that exit when asked, are not news. What fails a figure is returned.
	log := slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelError}))

	fmt.Fprintln(progress, "starting two hosts with a SQLite job queue (FULL, NORMAL), each with an inference worker with one executor child...")
	p, err := startWorkerPlane(ctx, filepath.Join(dir, "full"), "FULL")
	if err != nil {
		return err
	}
	defer p.close()
	normal, err := startWorkerPlane(ctx, filepath.Join(dir, "normal"), "NORMAL")
	if err != nil {
		return err
	}
	defer normal.close()
	for _, plane := range []*workerPlane{p, normal} {
		inference, err := plane.startWorker(ctx, o.exe, "inference", 1, log)
		if err != nil {
			return err
		}
		defer inference.stop()
	}
	inProcess := host.New(host.Config{Key: p.key, Escrows: noEscrows{}, Executor: executor.Builtin{}, ChainID: workerBenchChain,
		Logger: slog.New(slog.DiscardHandler)})
	defer inProcess.Close()
	hosts := []latencyHost{{"in_process", inProcess}, {"worker", p.engine}, {"worker_normal", normal.engine}}
	var nonce atomic.Uint64

	figures := map[string][]time.Duration{}
	var rates []float64
	for r := range o.rounds {
		lat, err := latencies(ctx, hosts, &nonce, o.samples)
		if err != nil {
			return err
		}
		for name, v := range lat {
			figures[name] = append(figures[name], v)
		}
		rate, err := p.drain(ctx, o.exe, o.jobs, log)
		if err != nil {
			return err
		}
		rates = append(rates, rate)
		fmt.Fprintf(progress, "round %d/%d: p50 in process %s ms, through a worker %s ms (added %s ms); %.0f validation jobs/s through 4 children\n",
			r+1, o.rounds, ms(lat["in_process_p50"]), ms(lat["worker_p50"]), ms(lat["added_p50"]), rate)
	}

	fmt.Fprintf(out, "# latency: from host.Engine.RunInference until the last of its 16 pieces arrives, %d inferences a round on each host, in turn; built-in model, no think time\n", o.samples)
	fmt.Fprintln(out, "# in_process: the host's own executor.Builtin; worker: enqueue on the host's queue (inference jobs volatile, in memory; the queue's file synchronous=FULL), a worker's claim over HTTP, a 'devshard executor builtin' child, the pieces back through the pieces route or with the finish")
	for _, name := range []string{"in_process_p50", "in_process_p99", "worker_p50", "worker_p99"} {
		fmt.Fprintf(out, "BENCH inference_%s %s ms\n", name, ms(medianOf(figures[name])))
	}
	fmt.Fprintln(out, "# added: worker minus in_process within a round, the median over the rounds")
	fmt.Fprintf(out, "BENCH inference_added_p50 %s ms\n", ms(medianOf(figures["added_p50"])))
	fmt.Fprintf(out, "BENCH inference_added_p99 %s ms\n", ms(medianOf(figures["added_p99"])))
	fmt.Fprintln(out, "# worker_normal: the same through a second host whose queue runs synchronous=NORMAL (storage.synchronous), no fsync per commit; worker minus worker_normal is what fsyncs cost an inference (none since its job is volatile)")
	fmt.Fprintf(out, "BENCH inference_worker_normal_p50 %s ms\n", ms(medianOf(figures["worker_normal_p50"])))
	fmt.Fprintf(out, "BENCH inference_worker_normal_p99 %s ms\n", ms(medianOf(figures["worker_normal_p99"])))
	fmt.Fprintf(out, "# validation_jobs: %d validation jobs enqueued before the clock starts, one worker with 4 executor children (concurrent 4 each: 16 claim loops), until it finished the last\n", o.jobs)
	fmt.Fprintf(out, "BENCH validation_jobs %.0f jobs/s\n", medianFloat(rates))
	ratio(out, "inference_added_p50/1ms", float64(medianOf(figures["added_p50"]))/float64(addedLatencyTarget), "<=", 1)
	return nil
}

func medianFloat(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// noEscrows is a chain that knows no escrow: the bench runs inferences and
// jobs without sessions.
type noEscrows struct{}

func (noEscrows) EscrowSnapshot(context.Context, uint64) (*sessionpb.EscrowSnapshot, error) {
	return nil, host.ErrUnknownEscrow
}

// workerPlane is a host engine that runs its inferences as jobs, with a
// SQLite queue, served over HTTP to the workers the bench starts.
type workerPlane struct {
	key     *signing.PrivKey
	workers []*signing.PrivKey // one per worker the bench starts: the inference one, the validation one
	q       *jobs.Queue
	engine  *host.Engine
	srv     *httptest.Server
	next    atomic.Uint64 // makes every validation job's input, and so its id, new
}

// startWorkerPlane starts a host whose queue is the file jobs.db in dir,
// with the given SQLite synchronous level.
func startWorkerPlane(ctx context.Context, dir, synchronous string) (*workerPlane, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &workerPlane{}
	accounts := make([]*signing.PrivKey, 3)
	for i := range accounts {
		k, err := signing.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		accounts[i] = k
	}
	p.key, p.workers = accounts[0], accounts[1:]
	d, err := sqlite.Open(ctx, filepath.Join(dir, sqlite.FileName), sqlite.Options{Synchronous: synchronous})
	if err != nil {
		return nil, err
	}
	// As the daemon's queue: inference jobs in memory (host openJobs).
	if p.q, err = jobs.New(d, jobs.Options{Volatile: jobs.IsInference}); err != nil {
		d.Close()
		return nil, err
	}
	p.engine = host.New(host.Config{Key: p.key, Escrows: noEscrows{}, Executor: executor.Builtin{}, ChainID: workerBenchChain,
		Workers: []signing.Address{p.workers[0].Address(), p.workers[1].Address()}, InferenceJobs: true,
		// The host logs each long poll a stopping worker cancels as an error.
		Logger: slog.New(slog.DiscardHandler)})
	p.engine.SetJobs(p.q)
	p.engine.MarkReady()
	p.srv = httptest.NewServer(host.Handler(p.engine, "bench"))
	return p, nil
}

func (p *workerPlane) close() {
	p.srv.Close()
	p.engine.Close()
	p.q.Close()
}

// runningWorker is a worker.Worker with its executor children, running.
type runningWorker struct {
	w      *worker.Worker
	x      *worker.Executors
	cancel context.CancelFunc
	done   chan struct{}
}

// newWorker makes a worker of the given job kind with children executor
// children (`exe executor builtin`, 4 at once each), started and ready;
// onJob, if set, hears each job's end. The worker claims nothing until
// run.
func (p *workerPlane) newWorker(ctx context.Context, exe, kind string, children int, log *slog.Logger, onJob func(string, error)) (*runningWorker, error) {
	cfg := &worker.FileConfig{}
	for i := range children {
		cfg.Executors = append(cfg.Executors, worker.ExecutorConfig{
			Name: fmt.Sprintf("builtin%d", i), Bin: exe, Args: []string{"executor", "builtin", "--concurrent", "4"},
			Kinds: []string{kind}, Models: []string{executor.BuiltinModel}, Concurrent: 4, Weight: 1,
			ReadyTimeout: worker.Duration(30 * time.Second),
		})
	}
	x, err := worker.StartExecutors(ctx, cfg, log, nil)
	if err != nil {
		return nil, fmt.Errorf("start the executor children: %w", err)
	}
	key := p.workers[0]
	if kind != hostapi.KindInference {
		key = p.workers[1]
	}
	w, err := worker.New(worker.Config{Host: worker.NewHost(key, workerBenchChain, p.srv.URL, p.engine.Address()),
		Runner: x, Log: log, ClaimWait: 25 * time.Second, OnJob: onJob})
	if err != nil {
		x.Stop(context.Background())
		return nil, err
	}
	return &runningWorker{w: w, x: x}, nil
}

func (rw *runningWorker) run(ctx context.Context) {
	ctx, rw.cancel = context.WithCancel(ctx)
	rw.done = make(chan struct{})
	go func() {
		defer close(rw.done)
		_ = rw.w.Run(ctx)
	}()
}

// startWorker is newWorker, running.
func (p *workerPlane) startWorker(ctx context.Context, exe, kind string, children int, log *slog.Logger) (*runningWorker, error) {
	rw, err := p.newWorker(ctx, exe, kind, children, log, nil)
	if err != nil {
		return nil, err
	}
	rw.run(ctx)
	return rw, nil
}

// stop ends the worker's claims and its children.
func (rw *runningWorker) stop() {
	if rw.cancel != nil {
		rw.cancel()
		<-rw.done
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rw.x.Stop(ctx)
}

// latencyHost is a host whose inferences are timed, and the name its
// figures go by.
type latencyHost struct {
	name   string
	engine *host.Engine
}

// latencies runs samples inferences on each host, in turn, and returns
// the p50 and p99 of each (name_p50, name_p99), and added_p50 and
// added_p99: worker's minus in_process's.
func latencies(ctx context.Context, hosts []latencyHost, nonce *atomic.Uint64, samples int) (map[string]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	lat := make([][]time.Duration, len(hosts))
	for i := range samples {
		// Rotate which host goes first, so none always follows another.
		var want string
		for j := range hosts {
			k := (i + j) % len(hosts)
			d, text, err := timeInference(ctx, hosts[k].engine, nonce.Add(1))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", hosts[k].name, err)
			}
			if j > 0 && text != want {
				return nil, fmt.Errorf("%s answered %q, and %s %q: the built-in model is deterministic", hosts[k].name, text, hosts[(i)%len(hosts)].name, want)
			}
			want = text
			lat[k] = append(lat[k], d)
		}
	}
	got := map[string]time.Duration{}
	for k, h := range hosts {
		slices.Sort(lat[k])
		got[h.name+"_p50"] = percentile(lat[k], 0.50)
		got[h.name+"_p99"] = percentile(lat[k], 0.99)
	}
	got["added_p50"] = got["worker_p50"] - got["in_process_p50"]
	got["added_p99"] = got["worker_p99"] - got["in_process_p99"]
	return got, nil
}

// timeInference runs benchRequest as inference nonce of escrow 1 on e and
// returns the time until its last piece arrived, and its text.
func timeInference(ctx context.Context, e *host.Engine, nonce uint64) (time.Duration, string, error) {
	var last atomic.Int64
	start := time.Now()
	res, err := e.RunInference(ctx, 1, nonce, benchRequest, func(string) error {
		last.Store(int64(time.Since(start)))
		return nil
	})
	if err != nil {
		return 0, "", fmt.Errorf("inference %d: %w", nonce, err)
	}
	if last.Load() == 0 {
		return 0, "", fmt.Errorf("inference %d streamed no piece", nonce)
	}
	return time.Duration(last.Load()), res.Text, nil
}

// drain enqueues n validation jobs, then starts a worker with four
// executor children and returns jobs/s from its start until it has
// finished the last. The children start before the clock does.
func (p *workerPlane) drain(ctx context.Context, exe string, n int, log *slog.Logger) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	if err := p.enqueueValidations(ctx, n); err != nil {
		return 0, err
	}
	var (
		mu       sync.Mutex
		finished int
		failure  error
		ended    bool
		end      = make(chan struct{})
	)
	onJob := func(kind string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			finished++
		} else if failure == nil {
			failure = fmt.Errorf("a %s job ended without a result: %w", kind, err)
		}
		if !ended && (failure != nil || finished == n) {
			ended = true
			close(end)
		}
	}
	rw, err := p.newWorker(ctx, exe, "validation", 4, log, onJob)
	if err != nil {
		return 0, err
	}
	defer rw.stop()
	start := time.Now()
	rw.run(ctx)
	select {
	case <-end:
	case <-ctx.Done():
	}
	elapsed := time.Since(start)
	mu.Lock()
	err, done := failure, finished
	mu.Unlock()
	if err == nil && done < n {
		return 0, fmt.Errorf("the worker finished %d of %d validation jobs in %s, and the phase timed out", done, n, phaseTimeout)
	}
	if err != nil {
		return 0, err
	}
	count, err := p.q.Count(ctx)
	if err != nil {
		return 0, err
	}
	if count[jobs.Ready]+count[jobs.Running]+count[jobs.Failed] != 0 {
		return 0, fmt.Errorf("after the drain the queue holds %v; want only succeeded jobs", count)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// enqueueValidations adds n validation jobs of another host's inferences
// (no vote follows), 8 enqueues at a time.
func (p *workerPlane) enqueueValidations(ctx context.Context, n int) error {
	next := make(chan uint64)
	go func() {
		defer close(next)
		for range n {
			select {
			case next <- p.next.Add(1):
			case <-ctx.Done():
				return
			}
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	return inParallel(8, func(int) error {
		for nonce := range next {
			if err := p.enqueueValidation(ctx, nonce); err != nil {
				cancel() // stops the feed
				return err
			}
		}
		return nil
	})
}

func (p *workerPlane) enqueueValidation(ctx context.Context, nonce uint64) error {
	in, err := json.Marshal(hostapi.ValidationInput{Host: "elsewhere", Escrow: 1, Inference: nonce, Request: benchRequest, TimeoutSeconds: 30})
	if err != nil {
		return err
	}
	_, created, err := p.q.Enqueue(ctx, jobs.KindValidation, in)
	if err == nil && !created {
		err = fmt.Errorf("validation job of inference %d was enqueued already: its input is not new", nonce)
	}
	return err
}
