package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/executor/ndjson"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
)

// These tests run a real worker against a real host with its real
// executors: child processes started from a config file, as an operator's
// would be. The children are this test binary run again with helperEnv,
// set in the executor's [executor.envs], naming a mode: TestMain sees it
// and serves ndjson instead of running tests, as worker/child's tests do.
// The misbehaving modes (crashing, never ready) stay out of the shipped
// binary.
const helperEnv = "DEVSHARD_WORKER_TEST_MODE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

func helper(mode string) int {
	var exec executor.Executor
	switch mode {
	case "builtin":
		exec = executor.Builtin{}
	case "crash-every-third":
		exec = &crashing{every: 3}
	case "crash-first":
		exec = &crashing{every: 1}
	case "env":
		exec = envEcho{}
	case "unloadable":
		exec = unloadable{}
	case "never-ready":
		time.Sleep(time.Hour)
		return 0
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		return 2
	}
	if err := ndjson.Serve(context.Background(), os.Stdin, os.Stdout, exec, 4); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// crashing is Builtin in a process that exits, mid-answer, on every
// every-th request it receives. The count is the process's own, so a
// restarted one serves every-1 requests before it crashes again.
type crashing struct {
	every int64
	n     atomic.Int64
}

func (c *crashing) Models() []string { return executor.Builtin{}.Models() }
func (c *crashing) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	if c.n.Add(1)%c.every != 0 {
		return executor.Builtin{}.Execute(ctx, req, emit)
	}
	emit("half an answer")
	fmt.Fprintln(os.Stderr, "crashing on purpose")
	os.Exit(3)
	panic("unreachable")
}

// unloadable prepares as Builtin does, and can load no artifact: every
// run that names one is a construction error.
type unloadable struct{ executor.Builtin }

func (unloadable) Load(model, path string) (executor.Executor, error) {
	return nil, fmt.Errorf("%w: %s cannot be loaded here (a test executor that loads nothing)", executor.ErrConstruction, path)
}

// envEcho answers with its GPU variable and its temp dir, as os.TempDir
// finds it, after checking that the dir exists.
type envEcho struct{}

func (envEcho) Models() []string { return nil }
func (envEcho) Execute(context.Context, executor.Request, func(string) error) (executor.Result, error) {
	dir := os.TempDir()
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return executor.Result{}, fmt.Errorf("the temp dir %q is not a directory: %v", dir, err)
	}
	return executor.Result{Text: os.Getenv("GPU") + "|" + dir, FinishReason: "stop"}, nil
}

// logBuffer collects the log of the executors and the worker for the test
// to read.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// faults is a real host, and the executors of a worker config file,
// started, with the log they and the worker write.
type faults struct {
	h    *realHost
	x    *Executors
	logs *logBuffer
	log  *slog.Logger
	// startTook is how long StartExecutors took.
	startTook time.Duration
}

// setupFaults starts a host, writes a worker config with tempDir (empty:
// the system's) and the [[executor]] blocks given, in which $BIN stands
// for this test binary, loads it and starts its executors. Everything
// stops when the test ends.
func setupFaults(t *testing.T, tempDir, blocks string) *faults {
	t.Helper()
	h := startHost(t, jobs.Options{})
	bin, err := os.Executable()
	require.NoError(t, err)
	text := fmt.Sprintf("temp_dir = %q\n\n[host]\nurl = %q\n\n", tempDir, h.url) +
		strings.ReplaceAll(blocks, "$BIN", strconv.Quote(bin))
	path := filepath.Join(t.TempDir(), "worker.toml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)

	f := &faults{h: h, logs: &logBuffer{}}
	f.log = slog.New(slog.NewTextHandler(f.logs, nil))
	began := time.Now()
	f.x, err = StartExecutors(context.Background(), cfg, f.log, nil)
	f.startTook = time.Since(began)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, f.x.Stop(context.Background())) })
	return f
}

// waitSucceeded waits for job id to end, and fails the test at once, with
// the job's error, if it failed.
func waitSucceeded(t *testing.T, q *jobs.Queue, id string) jobs.Job {
	t.Helper()
	var j jobs.Job
	require.Eventually(t, func() bool {
		var err error
		j, err = q.Get(context.Background(), id)
		return err == nil && (j.State == jobs.Succeeded || j.State == jobs.Failed)
	}, 10*time.Second, 10*time.Millisecond, "job %s never ended", id)
	require.Equal(t, jobs.Succeeded, j.State, "job %s failed: %s: %s", id, j.ErrorClass, j.Error)
	return j
}

// A worker whose executors crash on every third request they receive ends
// every job succeeded, with the model's answer: each crash fails the run
// in flight with executor_died, the worker runs it again on an executor
// that is up, and the crashed child is started again.
func TestWorkerOutlivesCrashingExecutors(t *testing.T) {
	t.Parallel()
	f := setupFaults(t, "", `
[[executor]]
name = "crashy0"
bin = $BIN
concurrent = 1
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "crash-every-third"

[[executor]]
name = "crashy1"
bin = $BIN
concurrent = 1
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "crash-every-third"
`)
	const n = 20
	var ids []string
	for i := range n {
		ids = append(ids, f.h.enqueueValidation(t, i))
	}
	w, _ := startWorker(t, Config{Host: f.h.host, Runner: f.x, Log: f.log})
	for i, id := range ids {
		j := waitSucceeded(t, f.h.q, id)
		requireBuiltinResult(t, j, i)
		require.Equal(t, 1, j.Attempt, "run again by the worker, within its lease, not by the host")
	}
	_, failed := w.Counts()
	require.Empty(t, failed)
	// A process serves two requests and crashes on its third, so n
	// answers took at least n/2 lives, of which all but the two alive now
	// ended in a crash whose run the worker ran again.
	logs := f.logs.String()
	require.GreaterOrEqual(t, strings.Count(logs, "the executor died mid-run; running the job again"), n/2-2)
	require.GreaterOrEqual(t, strings.Count(logs, `status="exit status 3"`), n/2-2)
	require.Contains(t, logs, "restarting executor")
}

// An executor that never prints its ready line does not hold the worker
// up: StartExecutors returns once its ready timeout has passed, says so
// in the log, and the worker serves every job through the executor that
// is ready.
func TestWorkerServesBesideAnExecutorNeverReady(t *testing.T) {
	t.Parallel()
	f := setupFaults(t, "", `
[[executor]]
name = "stuck"
bin = $BIN
ready_timeout = "1s"
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "never-ready"

[[executor]]
name = "good"
bin = $BIN
concurrent = 2
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "builtin"
`)
	require.Less(t, f.startTook, 4*time.Second, "StartExecutors waited out the stuck one's ready timeout (1s), not its restarts")
	require.Contains(t, f.logs.String(),
		`level=ERROR msg="executor not ready; it is started again after a pause, and the others serve meanwhile" executor=stuck err="executor stuck printed no ready line within its ready timeout of 1s; killed it"`)

	const n = 8
	var ids []string
	for i := range n {
		ids = append(ids, f.h.enqueueValidation(t, i))
	}
	w, _ := startWorker(t, Config{Host: f.h.host, Runner: f.x, Log: f.log})
	for i, id := range ids {
		requireBuiltinResult(t, waitSucceeded(t, f.h.q, id), i)
	}
	_, failed := w.Counts()
	require.Empty(t, failed)
	require.NotContains(t, f.logs.String(), `msg="executor ready" executor=stuck`)
}

// A job whose executor dies mid-run on every try ends failed with class
// executor_died once the worker's retries are spent. The host reads a
// validation failed with class execution as an invalid answer, a vote
// against the inference; one lost with its executor says nothing of the
// inference, so the class must come through as it is.
func TestWorkerFailsAJobWhoseExecutorDiesEveryTry(t *testing.T) {
	t.Parallel()
	f := setupFaults(t, "", `
[[executor]]
name = "doomed"
bin = $BIN
concurrent = 1
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "crash-first"
`)
	id := f.h.enqueueValidation(t, 1)
	w, _ := startWorker(t, Config{Host: f.h.host, Runner: f.x, Log: f.log, Retries: 1})
	j := waitState(t, f.h.q, id, jobs.Failed)
	require.Equal(t, ClassExecutorDied, j.ErrorClass)
	require.NotEqual(t, hostapi.ErrorClassExecution, j.ErrorClass)
	require.Equal(t, "executor doomed: died with the request in flight (executor_died)", j.Error)
	require.Equal(t, 1, j.Attempt)
	require.Equal(t, 1, strings.Count(f.logs.String(), "the executor died mid-run; running the job again"), "one run and one more")
	_, failed := w.Counts()
	require.Equal(t, map[string]int{ClassExecutorDied: 1}, failed)
}

// Each executor runs with its own [executor.envs] and a temp dir of its
// own under temp_dir, passed as TMPDIR: each job's answer, which is that
// executor's GPU variable and temp dir, is the one of the executor whose
// model it names.
func TestWorkerExecutorsHaveTheirOwnEnvAndTempDir(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	f := setupFaults(t, base, `
[[executor]]
name = "gpu0"
bin = $BIN
models = ["env-0"]
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "env"
GPU = "0"

[[executor]]
name = "gpu1"
bin = $BIN
models = ["env-1"]
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "env"
GPU = "1"
`)
	want := map[string]string{} // model: the hash of its executor's answer
	for _, gpu := range []string{"0", "1"} {
		dirs, err := filepath.Glob(filepath.Join(base, "executor-gpu"+gpu+"-*"))
		require.NoError(t, err)
		require.Len(t, dirs, 1, "one temp dir for executor gpu%s, under temp_dir", gpu)
		hash := sha256.Sum256([]byte(gpu + "|" + dirs[0]))
		want["env-"+gpu] = hex.EncodeToString(hash[:])
	}
	require.NotEqual(t, want["env-0"], want["env-1"])

	ids := map[string]string{} // job: model
	for i := range 6 {
		model := fmt.Sprint("env-", i%2)
		ids[f.h.enqueueValidationOf(t, i, executor.Request{Model: model, MaxTokens: 1})] = model
	}
	startWorker(t, Config{Host: f.h.host, Runner: f.x, Log: f.log})
	for id, model := range ids {
		var got hostapi.ValidationResult
		require.NoError(t, json.Unmarshal(waitSucceeded(t, f.h.q, id).Result, &got))
		require.Equal(t, want[model], got.ResponseHash, "job %s for %s", id, model)
	}
}
