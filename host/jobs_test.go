package host

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/sqlite"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	storesqlite "github.com/devshard/devshard/store/sqlite"
)

// openQueue opens a job queue on a SQLite file at path.
func openQueue(t *testing.T, path string, opts jobs.Options) *jobs.Queue {
	t.Helper()
	d, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	require.NoError(t, err)
	q, err := jobs.New(d, opts)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// workerBundle is a host that accepts one external worker, over real HTTP.
type workerBundle struct {
	e      *Engine
	q      *jobs.Queue
	url    string
	worker *signing.PrivKey
	w      *hostapi.Worker
}

func setupWorkers(t *testing.T, opts jobs.Options) *workerBundle {
	t.Helper()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	b := &workerBundle{worker: randomKey(t)}
	b.q = openQueue(t, filepath.Join(t.TempDir(), sqlite.FileName), opts)
	b.e = New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}, ChainID: testChainID, Workers: []signing.Address{b.worker.Address()},
		Logger: slog.New(slog.DiscardHandler)})
	b.e.SetJobs(b.q)
	b.e.MarkReady()
	t.Cleanup(b.e.Close)
	srv := httptest.NewServer(Handler(b.e, "test"))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	b.w = hostapi.NewWorker(b.worker, testChainID, srv.URL, b.e.Address(), &http.Client{Timeout: time.Minute})
	return b
}

func randomKey(t *testing.T) *signing.PrivKey {
	t.Helper()
	k, err := signing.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return k
}

// enqueue adds a validation job that is not this host's own (no vote
// follows its result) and returns its id.
func (b *workerBundle) enqueue(t *testing.T, n int) string {
	t.Helper()
	in, err := json.Marshal(hostapi.ValidationInput{Host: "elsewhere", Escrow: 9, Inference: uint64(n), Request: request(uint64(n)), TimeoutSeconds: 5})
	require.NoError(t, err)
	j, _, err := b.q.Enqueue(context.Background(), jobs.KindValidation, in)
	require.NoError(t, err)
	return j.ID
}

func validationResult(t *testing.T, text string) []byte {
	t.Helper()
	res := executor.Result{Text: text, Usage: executor.Usage{PromptTokens: 6, CompletionTokens: 20}}
	h := res.ResponseHash()
	raw, err := json.Marshal(hostapi.ValidationResult{ResponseHash: fmt.Sprintf("%x", h[:]), Usage: res.Usage})
	require.NoError(t, err)
	return raw
}

// Every validation of the honest run went through the queue: each
// validating host's queue holds its job, succeeded, run in process.
func TestValidationsGoThroughTheQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(3)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, _, body := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	resps := b.next(t, nil)
	b.next(t, nil, decodeTxs(t, resps[1].Mempool)...)
	for _, h := range b.hosts {
		h.Wait()
	}
	for i, h := range b.hosts {
		list, err := h.Jobs().List(context.Background(), jobs.Filter{All: true, Detail: true})
		require.NoError(t, err)
		if i == 1 {
			require.Empty(t, list, "the executor does not validate itself")
			continue
		}
		require.Len(t, list, 1, "host %d", i)
		j := list[0]
		require.Equal(t, jobs.KindValidation, j.Kind)
		require.Equal(t, jobs.Succeeded, j.State)
		require.Equal(t, inProcessWorker, j.Worker)
		var in hostapi.ValidationInput
		require.NoError(t, json.Unmarshal(j.Input, &in))
		require.Equal(t, hostapi.ValidationInput{Host: h.Address().String(), Escrow: b.f.Snapshot.EscrowId, Inference: 1, Request: in.Request,
			ResponseHash: in.ResponseHash, TokensUsed: in.TokensUsed, TimeoutSeconds: b.f.Snapshot.ExecutionTimeoutSeconds}, in)
		require.Equal(t, req.PromptHash(), in.Request.PromptHash())
		require.Equal(t, 1.0, metricValue(t, h.cfg.Metrics, "devshard_jobs_succeeded_total", "kind", "validation"))
	}
}

// Only the operator's workers reach the queue: an unsigned request, a key
// the host does not list, a request signed for another host, and a worker
// whose key was taken off the list (a restart without it) are 401, and the
// queue is as it was.
func TestWorkerRoutesAdmitOnlyListedWorkers(t *testing.T) {
	t.Parallel()
	b := setupWorkers(t, jobs.Options{})
	id := b.enqueue(t, 1)
	claim := hostapi.ClaimRequest{WaitMS: 0}
	stranger := randomKey(t)
	for name, send := range map[string]func() (int, []byte){
		"unsigned": func() (int, []byte) { return post(t, b.url+hostapi.ClaimJob.Path, claim) },
		"unknown key": func() (int, []byte) {
			return signedPost(t, b.url+hostapi.ClaimJob.Path, stranger, to(b.e.Address()), claim)
		},
		"other host": func() (int, []byte) {
			return signedPost(t, b.url+hostapi.ClaimJob.Path, b.worker, to(stranger.Address()), claim)
		},
		"unknown fails": func() (int, []byte) {
			return signedPost(t, b.url+hostapi.FailJob.ForJob(id), stranger, to(b.e.Address()), hostapi.FailRequest{Class: "x"})
		},
	} {
		status, body := send()
		require.Equal(t, http.StatusUnauthorized, status, "%s: %s", name, body)
	}
	status, body := signedPost(t, b.url+hostapi.ClaimJob.Path, stranger, to(b.e.Address()), claim)
	require.Equal(t, http.StatusUnauthorized, status)
	require.Contains(t, string(body), "worker "+stranger.Address().String()+" refused: it is not among the worker accounts this host accepts (jobs.workers)")
	j, err := b.q.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, jobs.Ready, j.State, "nothing changed")
	require.Zero(t, j.Attempt)

	// The listed worker claims; then the host restarts without it.
	c, err := b.w.Claim(context.Background(), 0)
	require.NoError(t, err)
	require.NotNil(t, c)
	again := New(Config{Key: b.e.cfg.Key, Escrows: &fakeChain{}, Executor: executor.Builtin{}, ChainID: testChainID, Workers: []signing.Address{randomKey(t).Address()}})
	again.SetJobs(b.q)
	again.MarkReady()
	t.Cleanup(again.Close)
	srv := httptest.NewServer(Handler(again, "test"))
	t.Cleanup(srv.Close)
	revoked := hostapi.NewWorker(b.worker, testChainID, srv.URL, again.Address(), http.DefaultClient)
	err = revoked.Finish(context.Background(), c.Lease, validationResult(t, "x"))
	var he *hostapi.Error
	require.ErrorAs(t, err, &he)
	require.Equal(t, http.StatusUnauthorized, he.Status, he.Message)
	j, err = b.q.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, jobs.Running, j.State, "the revoked worker's result is not stored")
}

// An idle worker's claim returns within milliseconds of an enqueue, not at
// the next poll.
func TestClaimLongPollWakesOnEnqueue(t *testing.T) {
	t.Parallel()
	b := setupWorkers(t, jobs.Options{PollInterval: time.Minute})
	got := make(chan *hostapi.ClaimResponse, 1)
	go func() {
		c, err := b.w.Claim(context.Background(), 20*time.Second, string(jobs.KindValidation))
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	time.Sleep(200 * time.Millisecond) // the claim is waiting
	start := time.Now()
	id := b.enqueue(t, 1)
	select {
	case c := <-got:
		require.NotNil(t, c)
		require.Equal(t, id, c.Lease.JobID)
		require.Equal(t, 1, c.Lease.Attempt)
		require.Less(t, time.Since(start), 10*time.Second, "woken by the enqueue: the next poll is a minute away")
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting claim was not woken by the enqueue")
	}
	// With nothing to claim, the wait ends empty-handed: 204.
	c, err := b.w.Claim(context.Background(), 50*time.Millisecond)
	require.NoError(t, err)
	require.Nil(t, c)
}

// DESIGN attack 15 over the wire: a worker whose lease was taken back
// finishes late; the host refuses it with 409 and the retry's result
// stands.
func TestAttackLateFinishOverTheWire(t *testing.T) {
	t.Parallel()
	clock := &testClock{now: time.Unix(1_800_000_000, 0)}
	b := setupWorkers(t, jobs.Options{Now: clock.Now, MaxTry: 3})
	id := b.enqueue(t, 1)
	ctx := context.Background()
	slow, err := b.w.Claim(ctx, time.Second)
	require.NoError(t, err)
	require.NotNil(t, slow)
	// The slow worker stops heartbeating; the rescuer takes its lease back
	// and the job is claimed again.
	clock.advance(b.q.Options().HeartbeatTimeout + time.Second)
	_, err = b.q.Rescue(ctx)
	require.NoError(t, err)
	retry, err := b.w.Claim(ctx, time.Second)
	require.NoError(t, err)
	require.NotNil(t, retry)
	require.Equal(t, 2, retry.Lease.Attempt)
	require.NoError(t, b.w.Finish(ctx, retry.Lease, validationResult(t, "the retry's")))

	for name, late := range map[string]error{
		"finish":    b.w.Finish(ctx, slow.Lease, validationResult(t, "the late one's")),
		"heartbeat": func() error { _, err := b.w.Heartbeat(ctx, slow.Lease); return err }(),
		"fail":      b.w.Fail(ctx, slow.Lease, hostapi.ErrorClassExecution, "late"),
	} {
		var he *hostapi.Error
		require.ErrorAs(t, late, &he, name)
		require.Equal(t, http.StatusConflict, he.Status, name)
		require.Contains(t, he.Message, "the lease of attempt 1 is stale: the job is at attempt 2 now (succeeded)", name)
	}
	j, err := b.q.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, jobs.Succeeded, j.State)
	require.Equal(t, validationResult(t, "the retry's"), j.Result, "the retry's result stands")
	// The same finish again, a worker that lost the reply, is accepted.
	require.NoError(t, b.w.Finish(ctx, retry.Lease, validationResult(t, "the retry's")))
}

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Each bad input to the worker routes gets its own 4xx, with a sentence,
// and changes nothing.
func TestWorkerRoutesBadInput(t *testing.T) {
	t.Parallel()
	b := setupWorkers(t, jobs.Options{})
	id := b.enqueue(t, 1)
	ctx := context.Background()
	c, err := b.w.Claim(ctx, 0)
	require.NoError(t, err)
	require.NotNil(t, c)
	lease := hostapi.FinishRequest{Attempt: c.Lease.Attempt, Token: c.Lease.Token}
	withResult := func(r []byte) hostapi.FinishRequest { l := lease; l.Result = r; return l }
	unknown := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name   string
		path   string
		body   any
		status int
		want   string
	}{
		{"malformed body", hostapi.FinishJob.ForJob(id), []byte(`{"attempt":`), http.StatusBadRequest, "malformed JSON body"},
		{"unknown field", hostapi.FinishJob.ForJob(id), []byte(`{"attempt":1,"tokn":"x"}`), http.StatusBadRequest, "unknown field"},
		{"malformed result", hostapi.FinishJob.ForJob(id), withResult([]byte(`"not a result"`)), http.StatusBadRequest, "the result is not a validation result"},
		{"result without a hash", hostapi.FinishJob.ForJob(id), withResult([]byte(`{"response_hash":"zz","usage":{}}`)), http.StatusBadRequest, `response_hash "zz" is not 64 hex digits`},
		{"oversized result", hostapi.FinishJob.ForJob(id), withResult(bytes.Repeat([]byte(" "), 1<<20+1)), http.StatusRequestEntityTooLarge, "job result of 1048577 bytes refused: the limit is 1048576 bytes"},
		{"oversized body", hostapi.FinishJob.ForJob(id), withResult(bytes.Repeat([]byte(" "), hostapi.MaxBody)), http.StatusRequestEntityTooLarge, "body exceeds"},
		{"malformed id", hostapi.FinishJob.ForJob("nope"), withResult(validationResult(t, "x")), http.StatusBadRequest, `job id "nope" is not 64 hex digits`},
		{"unknown id", hostapi.FinishJob.ForJob(unknown), withResult(validationResult(t, "x")), http.StatusNotFound, "no job " + unknown},
		{"unknown id heartbeat", hostapi.HeartbeatJob.ForJob(unknown), hostapi.HeartbeatRequest{Attempt: 1, Token: "x"}, http.StatusNotFound, "the job no longer exists"},
		{"wrong token", hostapi.FinishJob.ForJob(id), hostapi.FinishRequest{Attempt: c.Lease.Attempt, Token: "forged", Result: validationResult(t, "x")}, http.StatusConflict, "the token does not match"},
		{"fail without a class", hostapi.FailJob.ForJob(id), hostapi.FailRequest{Attempt: c.Lease.Attempt, Token: c.Lease.Token}, http.StatusBadRequest, "needs an error class"},
		{"wait too long", hostapi.ClaimJob.Path, hostapi.ClaimRequest{WaitMS: hostapi.MaxClaimWait.Milliseconds() + 1}, http.StatusBadRequest, "wait_ms must be 0 to 30000"},
		{"bad kind", hostapi.ClaimJob.Path, hostapi.ClaimRequest{Kinds: []string{""}}, http.StatusBadRequest, "the kind is empty"},
	} {
		status, body := signedPost(t, b.url+tc.path, b.worker, to(b.e.Address()), tc.body)
		require.Equal(t, tc.status, status, "%s: %s", tc.name, body)
		var refusal hostapi.ErrorResponse
		require.NoError(t, json.Unmarshal(body, &refusal), tc.name)
		require.Contains(t, refusal.Error, tc.want, tc.name)
	}
	j, err := b.q.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, jobs.Running, j.State, "nothing changed")
	require.Equal(t, 1, j.Attempt)
	require.Nil(t, j.Result)

	// Finished, the job refuses a finish by another lease: 409.
	require.NoError(t, b.w.Finish(ctx, c.Lease, validationResult(t, "done")))
	status, body := signedPost(t, b.url+hostapi.FailJob.ForJob(id), b.worker, to(b.e.Address()), hostapi.FailRequest{Attempt: c.Lease.Attempt, Token: c.Lease.Token, Class: "x"})
	require.Equal(t, http.StatusConflict, status, string(body))
	require.Contains(t, string(body), "the job has finished already (succeeded)")
}

// gatedExecutor blocks every run until its context ends, telling started.
type gatedExecutor struct {
	executor.Builtin
	started chan struct{}
}

func (g *gatedExecutor) Execute(ctx context.Context, _ executor.Request, _ func(string) error) (executor.Result, error) {
	select {
	case g.started <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return executor.Result{}, ctx.Err()
}

// A host restarted while a validation runs loses no job: after the
// restart the rescuer takes the dead run's lease back, the job runs again,
// and the host votes.
func TestRestartMidValidationLosesNoJob(t *testing.T) {
	t.Parallel()
	o := sessiontest.DefaultOptions()
	f := sessiontest.New(1, o)
	f.Snapshot.ValidationRateBps = 10000
	chain := &fakeChain{snaps: map[uint64]*sessionpb.EscrowSnapshot{f.Snapshot.EscrowId: f.Snapshot}}
	gw := f.Sequencer()
	storeDir, queuePath := t.TempDir(), filepath.Join(t.TempDir(), sqlite.FileName)
	opts := jobs.Options{HeartbeatTimeout: time.Second, MaxTry: 5}
	ctx := context.Background()

	st, err := storesqlite.Open(ctx, storeDir, storesqlite.Options{})
	require.NoError(t, err)
	q := openQueue(t, queuePath, opts)
	gate := &gatedExecutor{started: make(chan struct{}, 1)}
	e := New(Config{Key: f.Hosts[0], Store: st, Escrows: chain, Executor: gate, ChainID: testChainID})
	e.SetJobs(q)
	e.MarkReady()
	req := request(5)
	res, err := executor.Builtin{}.Execute(ctx, req, func(string) error { return nil })
	require.NoError(t, err)
	for _, d := range []struct {
		reqs map[uint64]executor.Request
		txs  []*sessionpb.Tx
	}{
		{map[uint64]executor.Request{1: req}, []*sessionpb.Tx{startTx(1, req)}},
		{nil, []*sessionpb.Tx{f.Confirm(1, 1, 100), f.Signed(1, finishTx(1, 1, res))}},
	} {
		diff, err := gw.Next(d.txs...)
		require.NoError(t, err)
		raw, err := diff.Marshal()
		require.NoError(t, err)
		_, err = e.ApplyDiff(ctx, f.Snapshot.EscrowId, raw, d.reqs)
		require.NoError(t, err)
	}
	select {
	case <-gate.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the validation never started")
	}
	list, err := q.List(ctx, jobs.Filter{})
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, jobs.Running, list[0].State)

	// The process dies mid-run: nothing finishes the job.
	e.Close()
	require.NoError(t, q.Close())
	require.NoError(t, st.Close())

	st, err = storesqlite.Open(ctx, storeDir, storesqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	q = openQueue(t, queuePath, opts)
	e = New(Config{Key: f.Hosts[0], Store: st, Escrows: chain, Executor: executor.Builtin{}, ChainID: testChainID})
	e.SetJobs(q)
	e.MarkReady()
	t.Cleanup(e.Close)
	e.Wait()
	j, err := q.Get(ctx, list[0].ID)
	require.NoError(t, err)
	require.Equal(t, jobs.Succeeded, j.State)
	require.GreaterOrEqual(t, j.Attempt, 2, "the dead run's attempt is counted")
	en, err := e.session(ctx, f.Snapshot.EscrowId)
	require.NoError(t, err)
	pool := en.pool.txs()
	en.mu.Unlock()
	require.Len(t, pool, 1)
	require.True(t, pool[0].GetValidation().GetValid(), "the host votes after the restart")
}

// The daemon keeps its queue in its storage directory and serves the
// admin endpoint from the URL and token it wrote to its admin file, which
// only its user reads.
func TestDaemonKeepsItsQueueBesideItsStorage(t *testing.T) {
	t.Parallel()
	b := setupDaemon(t)
	b.cfg.Jobs.AdminListen = "127.0.0.1:0"
	b.cfg.Jobs.AdminFile = filepath.Join(t.TempDir(), "admin.json")
	d, err := Open(t.Context(), b.cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, d.Close(context.Background())) }()
	require.FileExists(t, filepath.Join(b.cfg.Storage.Dir, sqlite.FileName))
	info, err := os.Stat(b.cfg.Jobs.AdminFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	raw, err := os.ReadFile(b.cfg.Jobs.AdminFile)
	require.NoError(t, err)
	var f hostapi.AdminFile
	require.NoError(t, json.Unmarshal(raw, &f))
	require.Equal(t, "http://"+d.AdminAddr(), f.URL)

	_, _, err = d.Engine.Jobs().Enqueue(context.Background(), "test", []byte("x"))
	require.NoError(t, err)
	list, err := (&hostapi.Admin{BaseURL: f.URL, Token: f.Token}).List(context.Background(), false)
	require.NoError(t, err)
	require.Len(t, list, 1)
	_, err = (&hostapi.Admin{BaseURL: f.URL, Token: "guess"}).List(context.Background(), false)
	require.ErrorContains(t, err, "answered 401")
	status, _ := get(t, d.URL()+hostapi.AdminListJobs.Path)
	require.Equal(t, http.StatusNotFound, status, "the public API serves no admin route")
}
