package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/sqlite"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

const chainID = "devshard-test"

// noEscrows is a fake chain that knows no escrow: these tests enqueue
// jobs by hand.
type noEscrows struct{}

func (noEscrows) EscrowSnapshot(context.Context, uint64) (*sessionpb.EscrowSnapshot, error) {
	return nil, host.ErrUnknownEscrow
}

// realHost is a host engine with a SQLite queue that accepts one worker
// key, served over real HTTP.
type realHost struct {
	q       *jobs.Queue
	host    Host
	url     string
	account signing.Address
}

func startHost(t *testing.T, opts jobs.Options) *realHost {
	t.Helper()
	hostKey, workerKey := newKey(t), newKey(t)
	d, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), sqlite.FileName), sqlite.Options{})
	require.NoError(t, err)
	q, err := jobs.New(d, opts)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	e := host.New(host.Config{Key: hostKey, Escrows: noEscrows{}, Executor: executor.Builtin{}, ChainID: chainID,
		Workers: []signing.Address{workerKey.Address()}, Logger: slog.New(slog.DiscardHandler)})
	e.SetJobs(q)
	e.MarkReady()
	t.Cleanup(e.Close)
	srv := httptest.NewServer(host.Handler(e, "test"))
	t.Cleanup(srv.Close)
	return &realHost{q: q, host: NewHost(workerKey, chainID, srv.URL, e.Address()), url: srv.URL, account: e.Address()}
}

func newKey(t *testing.T) *signing.PrivKey {
	t.Helper()
	k, err := signing.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return k
}

func question(n int) executor.Request {
	return executor.Request{Model: executor.BuiltinModel, MaxTokens: 16, Messages: []executor.Message{{Role: "user", Content: fmt.Sprintf("question %d", n)}}}
}

// enqueueValidation adds a validation of another host (no vote follows)
// of question n.
func (h *realHost) enqueueValidation(t *testing.T, n int) string {
	t.Helper()
	return h.enqueueValidationOf(t, n, question(n))
}

// enqueueValidationOf adds a validation of another host's inference n,
// whose request was req.
func (h *realHost) enqueueValidationOf(t *testing.T, n int, req executor.Request) string {
	t.Helper()
	in, err := json.Marshal(hostapi.ValidationInput{Host: "elsewhere", Escrow: 9, Inference: uint64(n), Request: req, TimeoutSeconds: 30})
	require.NoError(t, err)
	j, _, err := h.q.Enqueue(context.Background(), jobs.KindValidation, in)
	require.NoError(t, err)
	return j.ID
}

// runner is a Runner over one in-process executor, with slots slots.
type runner struct {
	ex    executor.Executor
	slots int
	calls atomic.Int32
}

func (r *runner) Run(ctx context.Context, t Task, onPieces Pieces) (executor.Result, error) {
	r.calls.Add(1)
	return r.ex.Execute(ctx, t.Request, EachPiece(onPieces))
}
func (r *runner) Kinds() []string { return []string{"validation"} }
func (r *runner) Slots() int      { return r.slots }

func startWorker(t *testing.T, cfg Config) (*Worker, context.CancelFunc) {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.ClaimWait = 2 * time.Second
	w, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return w, cancel
}

func waitState(t *testing.T, q *jobs.Queue, id string, want jobs.State) jobs.Job {
	t.Helper()
	var j jobs.Job
	require.Eventually(t, func() bool {
		var err error
		j, err = q.Get(context.Background(), id)
		return err == nil && j.State == want
	}, 10*time.Second, 10*time.Millisecond, "job %s never became %s", id, want)
	return j
}

// A worker drains the host's validation jobs over real HTTP, with the
// result of the model for each.
func TestWorkerRunsValidationJobs(t *testing.T) {
	t.Parallel()
	h := startHost(t, jobs.Options{})
	var ids []string
	for n := range 12 {
		ids = append(ids, h.enqueueValidation(t, n))
	}
	reg := prometheus.NewRegistry()
	startWorker(t, Config{Host: h.host, Runner: &runner{ex: executor.Builtin{}, slots: 3}, Registerer: reg})
	for n, id := range ids {
		requireBuiltinResult(t, waitState(t, h.q, id, jobs.Succeeded), n)
	}
	require.Eventually(t, func() bool {
		return seriesValue(reg, "devshard_worker_jobs_total", "kind", "validation", "outcome", "succeeded") == 12
	}, 5*time.Second, 10*time.Millisecond, "the worker counts the jobs it ended")
}

// seriesValue is the value of the series of a registry with a name and
// label pairs; 0 when there is none.
func seriesValue(reg *prometheus.Registry, name string, labels ...string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}

// requireBuiltinResult checks that validation job j, of question n, holds
// what the built-in model answers to it, run in process.
func requireBuiltinResult(t *testing.T, j jobs.Job, n int) {
	t.Helper()
	var got hostapi.ValidationResult
	require.NoError(t, json.Unmarshal(j.Result, &got), "job %s", j.ID)
	want, err := executor.Builtin{}.Execute(context.Background(), question(n), func(string) error { return nil })
	require.NoError(t, err)
	hash := want.ResponseHash()
	require.Equal(t, hex.EncodeToString(hash[:]), got.ResponseHash, "job %s, question %d", j.ID, n)
	require.Equal(t, want.Usage, got.Usage, "job %s, question %d", j.ID, n)
}

// blockingRunner runs until its context ends, telling started, and
// records why it ended.
type blockingRunner struct {
	started chan struct{}
	ended   chan error
}

func (r *blockingRunner) Run(ctx context.Context, _ Task, _ Pieces) (executor.Result, error) {
	r.started <- struct{}{}
	<-ctx.Done()
	r.ended <- context.Cause(ctx)
	return executor.Result{}, ctx.Err()
}
func (r *blockingRunner) Kinds() []string { return []string{"validation"} }
func (r *blockingRunner) Slots() int      { return 1 }

// A job the operator removes while it runs stops on the worker at its
// next heartbeat, not when the run would have ended: the heartbeat's
// refusal cancels it. The heartbeat keeps a long run's lease meanwhile.
func TestWorkerStopsARunWhoseLeaseIsLost(t *testing.T) {
	t.Parallel()
	h := startHost(t, jobs.Options{HeartbeatTimeout: 900 * time.Millisecond})
	id := h.enqueueValidation(t, 1)
	r := &blockingRunner{started: make(chan struct{}, 1), ended: make(chan error, 1)}
	startWorker(t, Config{Host: h.host, Runner: r})
	<-r.started
	time.Sleep(2 * time.Second) // two lease lengths: only heartbeats keep it
	j, err := h.q.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, jobs.Running, j.State, "the heartbeat kept the lease")
	require.Equal(t, 1, j.Attempt)

	require.NoError(t, h.q.Remove(context.Background(), id))
	select {
	case cause := <-r.ended:
		require.ErrorIs(t, cause, errLeaseLost)
	case <-time.After(5 * time.Second):
		t.Fatal("the run went on after its job was removed")
	}
}

// diesRunner loses its executor on the first runs, then answers.
type diesRunner struct {
	runner
	deaths int32
}

type classed struct{ class, msg string }

func (c classed) Error() string { return c.msg }
func (c classed) Class() string { return c.class }

func (r *diesRunner) Run(ctx context.Context, t Task, onPieces Pieces) (executor.Result, error) {
	if n := r.calls.Add(1); n <= r.deaths {
		return executor.Result{}, classed{ClassExecutorDied, "the executor exited with signal: killed"}
	}
	return r.ex.Execute(ctx, t.Request, EachPiece(onPieces))
}

// A run lost with its executor is run again, up to Retries more times;
// past that the job is failed with class executor_died, which the host
// does not count as a vote.
func TestWorkerRunsAgainWhenItsExecutorDies(t *testing.T) {
	t.Parallel()
	h := startHost(t, jobs.Options{})
	id := h.enqueueValidation(t, 1)
	r := &diesRunner{runner: runner{ex: executor.Builtin{}, slots: 1}, deaths: 2}
	w, _ := startWorker(t, Config{Host: h.host, Runner: r, Retries: 2})
	waitState(t, h.q, id, jobs.Succeeded)
	require.EqualValues(t, 3, r.calls.Load())

	id2 := h.enqueueValidation(t, 2)
	r.calls.Store(0)
	r.deaths = 100
	j := waitState(t, h.q, id2, jobs.Failed)
	require.Equal(t, ClassExecutorDied, j.ErrorClass)
	require.EqualValues(t, 3, r.calls.Load(), "one run and two more")
	_, failed := w.Counts()
	require.Equal(t, 1, failed[ClassExecutorDied])
}

// fakeHost records the pieces a stream sends; each call tells began,
// when set and free, then takes delay.
type fakeHost struct {
	Host
	delay time.Duration
	began chan struct{}
	mu    sync.Mutex
	calls [][]string
	seqs  []uint64
}

func (f *fakeHost) Pieces(_ context.Context, _ hostapi.Lease, seq uint64, pieces []string) error {
	select {
	case f.began <- struct{}{}:
	default:
	}
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, pieces)
	f.seqs = append(f.seqs, seq)
	return nil
}

// Pieces leave in order, numbered from 0, and those that come while a
// call is in flight go together in the next one.
func TestStreamBatchesWhileACallIsInFlight(t *testing.T) {
	t.Parallel()
	f := &fakeHost{delay: 30 * time.Millisecond, began: make(chan struct{}, 1)}
	s := newStream(context.Background(), f, hostapi.Lease{JobID: "j", Attempt: 1, Token: "t"})
	require.True(t, s.empty())
	var want []string
	for i := range 40 {
		p := fmt.Sprintf("p%d ", i)
		want = append(want, p)
		require.NoError(t, s.add([]string{p}, false))
		if i == 0 {
			// The first piece leaves with no other to wait for. Waiting
			// here for its call, rather than sleeping, holds on a loaded
			// machine too, where the sending goroutine may start late.
			select {
			case <-f.began:
			case <-time.After(5 * time.Second):
				t.Fatal("the first piece did not leave until another came")
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	require.NoError(t, s.close())
	require.False(t, s.empty())
	var got []string
	for i, c := range f.calls {
		require.Equal(t, uint64(i), f.seqs[i])
		got = append(got, c...)
	}
	require.Equal(t, strings.Join(want, ""), strings.Join(got, ""))
	require.Less(t, len(f.calls), 20, "pieces that came during a call went together")
	require.Len(t, f.calls[0], 1, "the first piece left alone")
}

// A worker whose key the host does not accept stops at once with the
// host's sentence, and claims nothing.
func TestWorkerRefusedByTheHostStops(t *testing.T) {
	t.Parallel()
	h := startHost(t, jobs.Options{})
	id := h.enqueueValidation(t, 1)
	stranger := NewHost(newKey(t), chainID, h.url, h.account)
	w, err := New(Config{Host: stranger, Runner: &runner{ex: executor.Builtin{}, slots: 2}, Log: slog.New(slog.DiscardHandler), ClaimWait: time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = w.Run(ctx)
	require.ErrorIs(t, err, ErrRefused)
	require.Contains(t, err.Error(), "is not among the worker accounts this host accepts")
	require.NoError(t, ctx.Err(), "it stopped at once, not at the deadline")
	j, err := h.q.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, jobs.Ready, j.State, "nothing claimed")
}
