package child_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/executor/ndjson"
	"github.com/devshard/devshard/worker/child"
	"github.com/devshard/devshard/worker/pool"
)

// The children in these tests are this test binary run again with
// helperEnv naming a mode: TestMain sees it and serves ndjson instead of
// running tests. That costs no build (linking the devshard binary takes
// far longer than these tests), and the misbehaving modes a supervisor
// must survive (crashing, never ready) stay out of the shipped binary.
// The builtin mode runs what 'devshard executor builtin' runs,
// ndjson.Serve over executor.Builtin; cmd/devshard tests that command.
const helperEnv = "DEVSHARD_CHILD_TEST_MODE"

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
	case "slow":
		exec = executor.Builtin{ThinkTime: 20 * time.Millisecond}
	case "crash3":
		exec = &crashEveryThird{}
	case "env":
		exec = envEcho{}
	case "stubborn": // ready, then deaf to its stdin closing
		fmt.Println(`{"ready":true,"models":["x"]}`)
		time.Sleep(time.Hour)
		return 0
	case "burst": // answers each request whole, all its lines in one write
		fmt.Println(`{"ready":true,"models":["builtin"]}`)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			var req ndjson.Request
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				return 1
			}
			var b strings.Builder
			for _, p := range []string{"a ", "b ", "c"} {
				fmt.Fprintf(&b, "{\"id\":%q,\"piece\":%q}\n", req.ID, p)
			}
			fmt.Fprintf(&b, "{\"id\":%q,\"output\":{\"text\":\"a b c\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3},\"finish_reason\":\"stop\"}}\n", req.ID)
			if _, err := os.Stdout.WriteString(b.String()); err != nil {
				return 1
			}
		}
		return 0
	case "silent":
		fmt.Fprintln(os.Stderr, "loading weights, slowly")
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

// crashEveryThird is Builtin that exits the process on its third request,
// after the first piece, as a child that crashes mid-answer.
type crashEveryThird struct{ n atomic.Int64 }

func (c *crashEveryThird) Models() []string { return executor.Builtin{}.Models() }
func (c *crashEveryThird) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	if c.n.Add(1)%3 != 0 {
		return executor.Builtin{}.Execute(ctx, req, emit)
	}
	emit("half an answer")
	fmt.Fprintln(os.Stderr, "crashing on purpose")
	os.Exit(3)
	panic("unreachable")
}

// envEcho answers with its GPU variable and its temp dir, after checking
// that the dir exists.
type envEcho struct{}

func (envEcho) Models() []string { return []string{"env"} }
func (envEcho) Execute(context.Context, executor.Request, func(string) error) (executor.Result, error) {
	dir := os.Getenv("TMPDIR")
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return executor.Result{}, fmt.Errorf("TMPDIR %q is not a directory: %v", dir, err)
	}
	return executor.Result{Text: os.Getenv("GPU") + "|" + dir, FinishReason: "stop"}, nil
}

// logBuffer collects a child's log for the test to read.
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

func config(name, mode string, logs *logBuffer) child.Config {
	return child.Config{
		Name: name, Bin: os.Args[0], Env: map[string]string{helperEnv: mode},
		Kinds: []ndjson.Kind{ndjson.KindInference, ndjson.KindValidation}, Concurrent: 2, Weight: 1,
		ReadyTimeout: 5 * time.Second, RestartMin: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}
}

// start starts a child and stops it when the test ends.
func start(t *testing.T, cfg child.Config) (*child.Child, error) {
	t.Helper()
	c, err := child.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })
	return c, c.Start(context.Background())
}

func inference(content string) ndjson.Task {
	return ndjson.Task{Kind: ndjson.KindInference, Request: executor.Request{
		Model: executor.BuiltinModel, MaxTokens: 1000, Messages: []executor.Message{{Role: "user", Content: content}},
	}}
}

// do runs a task, returning the output, the concatenated pieces and the error.
func do(c *child.Child, task ndjson.Task) (ndjson.Output, string, error) {
	var pieces strings.Builder
	out, err := c.Do(context.Background(), task, func(ps []string, _ bool) error {
		for _, p := range ps {
			pieces.WriteString(p)
		}
		return nil
	})
	return out, pieces.String(), err
}

// Pieces the child wrote at once reach the caller in one call, marked
// last when the output came with them (a fast model's whole answer: the
// worker sends it with its finish); pieces that come apart come apart.
func TestPiecesThatComeTogetherComeInOneCall(t *testing.T) {
	t.Parallel()
	type call struct {
		pieces []string
		last   bool
	}
	run := func(c *child.Child) ([]call, ndjson.Output) {
		var calls []call
		out, err := c.Do(context.Background(), inference("hi"), func(ps []string, last bool) error {
			calls = append(calls, call{ps, last})
			return nil
		})
		require.NoError(t, err)
		return calls, out
	}
	burst, err := start(t, config("burst", "burst", &logBuffer{}))
	require.NoError(t, err)
	calls, out := run(burst)
	require.Equal(t, []call{{[]string{"a ", "b ", "c"}, true}}, calls)
	require.Equal(t, "a b c", out.Text)

	slow, err := start(t, config("slow", "slow", &logBuffer{}))
	require.NoError(t, err)
	calls, out = run(slow)
	require.Greater(t, len(calls), 1, "pieces a think time apart come in calls of their own")
	var text strings.Builder
	for i, c := range calls {
		if c.last {
			require.Equal(t, len(calls)-1, i, "only the last call can be marked last")
		}
		text.WriteString(strings.Join(c.pieces, ""))
	}
	require.Equal(t, out.Text, text.String())
}

func TestExecutorBuiltinOverNDJSON(t *testing.T) {
	t.Parallel()
	c, err := start(t, config("builtin", "builtin", &logBuffer{}))
	require.NoError(t, err)
	require.True(t, c.Ready())
	require.True(t, c.Serves(ndjson.KindInference, executor.BuiltinModel), "models from the ready line")
	require.False(t, c.Serves(ndjson.KindInference, "other"))

	// Several at once, so answers interleave by id.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			task := inference(fmt.Sprint("question ", i))
			want, err := executor.Builtin{}.Execute(context.Background(), task.Request, func(string) error { return nil })
			require.NoError(t, err)
			out, pieces, err := do(c, task)
			require.NoError(t, err)
			require.Equal(t, ndjson.Output{Text: want.Text, Usage: want.Usage, FinishReason: want.FinishReason}, out)
			require.Equal(t, out.Text, pieces, "pieces concatenate to the text")
		})
	}
	wg.Wait()

	task := inference("x")
	task.Request.MaxTokens = 0
	_, _, err = do(c, task)
	var failed *child.Error
	require.ErrorAs(t, err, &failed)
	require.Equal(t, ndjson.ClassBadRequest, failed.Class)
	require.Equal(t, "builtin", failed.Executor)
}

// TestExecutorRestartsAfterCrash: the child dies on every third request;
// that request fails at once with executor_died, the child comes back,
// and later requests succeed.
func TestExecutorRestartsAfterCrash(t *testing.T) {
	t.Parallel()
	logs := &logBuffer{}
	c, err := start(t, config("crashy", "crash3", logs))
	require.NoError(t, err)
	for round := range 2 {
		for i := range 2 {
			waitReady(t, c)
			_, _, err := do(c, inference(fmt.Sprint(round, i)))
			require.NoError(t, err, "round %d request %d", round, i)
		}
		began := time.Now()
		_, pieces, err := do(c, inference("the third"))
		var failed *child.Error
		require.ErrorAs(t, err, &failed)
		require.Equal(t, child.ClassDied, failed.Class)
		require.Less(t, time.Since(began), time.Second, "failed when the child died, not at a timeout")
		require.Equal(t, "half an answer", pieces, "the pieces before the crash were delivered")
	}
	waitReady(t, c)
	_, _, err = do(c, inference("after the crashes"))
	require.NoError(t, err)
	require.Contains(t, logs.String(), "exit status 3", "the exit status is logged")
	require.Contains(t, logs.String(), `msg="executor stderr" executor=crashy line="crashing on purpose"`)
	require.Contains(t, logs.String(), "restarting executor")
}

func waitReady(t *testing.T, c *child.Child) {
	t.Helper()
	require.Eventually(t, c.Ready, 5*time.Second, 5*time.Millisecond, "executor %s never became ready", c.Name())
}

// TestExecutorNeverReady: a child that prints no ready line is killed at
// its ready timeout with a clear error, and a pool keeps serving jobs
// with the executors it has.
func TestExecutorNeverReady(t *testing.T) {
	t.Parallel()
	logs := &logBuffer{}
	cfg := config("stuck", "silent", logs)
	// Long enough for the helper to start and print to stderr under -race.
	cfg.ReadyTimeout, cfg.RestartMin = time.Second, time.Second
	began := time.Now()
	stuck, err := start(t, cfg)
	require.EqualError(t, err, "executor stuck printed no ready line within its ready timeout of 1s; killed it")
	require.Less(t, time.Since(began), 3*time.Second)
	require.False(t, stuck.Ready())
	require.False(t, stuck.TryAcquire())
	require.Contains(t, logs.String(), `msg="executor stderr" executor=stuck line="loading weights, slowly"`)
	require.Contains(t, logs.String(), "signal: killed")

	good, err := start(t, config("good", "builtin", &logBuffer{}))
	require.NoError(t, err)
	p := pool.New(stuck, good)
	for range 6 {
		e, release, err := p.Acquire(context.Background(), ndjson.KindInference, executor.BuiltinModel)
		require.NoError(t, err)
		require.Equal(t, "good", e.Name())
		_, _, err = do(e, inference("still served"))
		release()
		require.NoError(t, err)
	}
}

// TestExecutorEnvAndTempDir: each child sees its own environment values
// and its own temp dir, which exists while it runs and is gone after.
func TestExecutorEnvAndTempDir(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	var dirs []string
	for _, gpu := range []string{"0", "1"} {
		logs := &logBuffer{}
		cfg := config("gpu"+gpu, "env", logs)
		cfg.Env["GPU"], cfg.TempDir = gpu, base
		c, err := child.New(cfg)
		require.NoError(t, err)
		require.NoError(t, c.Start(context.Background()))
		task := ndjson.Task{Kind: ndjson.KindValidation, Request: executor.Request{Model: "env"}}
		out, _, err := do(c, task)
		require.NoError(t, err)
		got, dir, _ := strings.Cut(out.Text, "|")
		require.Equal(t, gpu, got)
		require.Equal(t, base, filepath.Dir(dir), "the temp dir is under the configured base")
		dirs = append(dirs, dir)
		require.NoError(t, c.Stop(context.Background()))
		require.NoDirExists(t, dir, "removed on stop")
		require.Contains(t, logs.String(), `status="exit status 0"`, "it exited by itself when its stdin closed")
	}
	require.NotEqual(t, dirs[0], dirs[1])
}

// TestExecutorAbandonedRequest: a caller that leaves gets its context's
// error; the request holds the child's capacity until the child finishes
// it, and its late answer is discarded.
func TestExecutorAbandonedRequest(t *testing.T) {
	t.Parallel()
	cfg := config("slow", "slow", &logBuffer{})
	cfg.Concurrent = 1
	c, err := start(t, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Do(ctx, inference("take your time"), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 1, c.InFlight(), "the child still runs it")
	require.False(t, c.TryAcquire(), "so it has no slot free")
	require.Eventually(t, func() bool { return c.InFlight() == 0 }, 5*time.Second, 10*time.Millisecond)
	require.True(t, c.TryAcquire())
	c.Release()
	task := inference("short")
	task.Request.MaxTokens = 2
	out, _, err := do(c, task)
	require.NoError(t, err)
	require.Equal(t, 2, out.Usage.CompletionTokens)
}

// TestExecutorStopKillsAStubbornChild: a child that does not exit when its
// stdin closes is killed after StopGrace, and Stop says so.
func TestExecutorStopKillsAStubbornChild(t *testing.T) {
	t.Parallel()
	cfg := config("deaf", "stubborn", &logBuffer{})
	cfg.StopGrace = 100 * time.Millisecond
	c, err := child.New(cfg)
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	began := time.Now()
	require.EqualError(t, c.Stop(context.Background()), "executor deaf did not exit within 100ms of its stdin closing; killed it")
	require.Less(t, time.Since(began), 2*time.Second)
	require.False(t, c.Ready())
}

// TestExecutorPythonExample runs the example executor of docs/workers.md,
// so the page cannot drift from the protocol.
func TestExecutorPythonExample(t *testing.T) {
	t.Parallel()
	python, err := osexec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 here")
	}
	page, err := os.ReadFile("../../docs/workers.md")
	require.NoError(t, err)
	_, code, ok := strings.Cut(string(page), "```python\n")
	require.True(t, ok, "the page has a Python example")
	code, _, _ = strings.Cut(code, "```")
	script := filepath.Join(t.TempDir(), "echo.py")
	require.NoError(t, os.WriteFile(script, []byte(code), 0o600))

	c, err := start(t, child.Config{
		Name: "python", Bin: python, Args: []string{script}, Kinds: []ndjson.Kind{ndjson.KindInference},
		Concurrent: 1, Weight: 1, ReadyTimeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil)),
	})
	require.NoError(t, err)
	require.True(t, c.Serves(ndjson.KindInference, "echo"))
	task := ndjson.Task{Kind: ndjson.KindInference, Request: executor.Request{
		Model: "echo", MaxTokens: 2, Messages: []executor.Message{{Role: "user", Content: "hello big world"}},
	}}
	out, pieces, err := do(c, task)
	require.NoError(t, err)
	require.Equal(t, ndjson.Output{Text: "hello big", Usage: executor.Usage{PromptTokens: 3, CompletionTokens: 2}, FinishReason: "length"}, out)
	require.Equal(t, out.Text, pieces)

	_, _, err = do(c, ndjson.Task{Kind: ndjson.KindPrepare, Prepare: &executor.Preparation{Model: "echo", Out: filepath.Join(t.TempDir(), "a")}})
	var failed *child.Error
	require.ErrorAs(t, err, &failed)
	require.Equal(t, ndjson.ClassPreparation, failed.Class, "it prepares nothing, and says so")
	out, _, err = do(c, task)
	require.NoError(t, err, "and goes on serving")
	require.Equal(t, "hello big", out.Text)
}

// TestExecutorChildPrepares: Do carries a prepare task and a run's
// artifact to the child, and the protocol's classes come back unchanged in
// child.Error.Class.
func TestExecutorChildPrepares(t *testing.T) {
	t.Parallel()
	c, err := start(t, config("builtin", "builtin", &logBuffer{}))
	require.NoError(t, err)
	dir := t.TempDir()
	art := filepath.Join(dir, "artifact")
	out, _, err := do(c, ndjson.Task{Kind: ndjson.KindPrepare, Prepare: &executor.Preparation{Model: executor.BuiltinModel, Out: art}})
	require.NoError(t, err)
	st, err := os.Stat(art)
	require.NoError(t, err)
	require.Equal(t, st.Size(), out.Prepared.Bytes)

	task := inference("from the artifact")
	want, err := executor.Builtin{}.Execute(context.Background(), task.Request, func(string) error { return nil })
	require.NoError(t, err)
	task.Artifact = art
	out, pieces, err := do(c, task)
	require.NoError(t, err)
	require.Equal(t, ndjson.Output{Text: want.Text, Usage: want.Usage, FinishReason: want.FinishReason}, out)
	require.Equal(t, out.Text, pieces)

	classOf := func(err error) ndjson.Class {
		t.Helper()
		var failed *child.Error
		require.ErrorAs(t, err, &failed)
		return failed.Class
	}
	_, _, err = do(c, ndjson.Task{Kind: ndjson.KindPrepare, Prepare: &executor.Preparation{Model: "llama", Out: filepath.Join(dir, "b")}})
	require.Equal(t, ndjson.ClassPreparation, classOf(err))

	raw, err := os.ReadFile(art)
	require.NoError(t, err)
	raw[len(raw)-40] ^= 1
	corrupt := filepath.Join(dir, "corrupt")
	require.NoError(t, os.WriteFile(corrupt, raw, 0o600))
	task.Kind, task.Artifact = ndjson.KindValidation, corrupt
	_, _, err = do(c, task)
	require.Equal(t, ndjson.ClassConstruction, classOf(err))
	require.ErrorContains(t, err, "payload checksum mismatch")
}
