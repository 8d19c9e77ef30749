package worker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/artifacts"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/jobs"
)

// cacheOf is the artifact cache of the executor named name.
func (f *faults) cacheOf(t *testing.T, name string) *artifacts.Cache {
	t.Helper()
	for c, cache := range f.x.caches {
		if c.Name() == name {
			return cache
		}
	}
	t.Fatalf("executor %s has no cache", name)
	return nil
}

// An executor that prepares runs each model from one verified artifact:
// eight jobs in flight at once for an unprepared model cause one
// preparation, and an artifact with one byte flipped on disk is caught
// before the next job loads it, prepared again, and the job still gets
// the model's answer.
func TestWorkerPreparesOnceAndChecksEveryLoad(t *testing.T) {
	t.Parallel()
	f := setupFaults(t, "", `
[[executor]]
name = "prep"
bin = $BIN
concurrent = 8
prepare = true
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "builtin"
`)
	cache := f.cacheOf(t, "prep")
	var ids []string
	for i := range 8 {
		ids = append(ids, f.h.enqueueValidation(t, i))
	}
	startWorker(t, Config{Host: f.h.host, Runner: f.x, Log: f.log})
	for i, id := range ids {
		requireBuiltinResult(t, waitSucceeded(t, f.h.q, id), i)
	}
	st := cache.Stats()
	require.EqualValues(t, 1, st.Preparations, "eight jobs, one preparation")

	path := filepath.Join(cache.Dir(), executor.BuiltinModel)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	raw[len(raw)/2] ^= 0x01
	require.NoError(t, os.WriteFile(path, raw, 0o600))
	id := f.h.enqueueValidation(t, 100)
	requireBuiltinResult(t, waitSucceeded(t, f.h.q, id), 100)
	st = cache.Stats()
	require.EqualValues(t, 1, st.ChecksumFailures, "the flipped byte was caught before the load")
	require.EqualValues(t, 2, st.Preparations, "and the artifact prepared again")
}

// An artifact the executor cannot load is discarded and prepared once
// more; a second construction error in a row is the model's deterministic
// error on that executor: the job fails with class construction (which
// casts no vote), and the next job of the model fails at once, with no
// third preparation, until the worker restarts.
func TestWorkerConstructionFailingTwiceIsDeterministic(t *testing.T) {
	t.Parallel()
	f := setupFaults(t, "", `
[[executor]]
name = "bad"
bin = $BIN
prepare = true
[executor.envs]
DEVSHARD_WORKER_TEST_MODE = "unloadable"
`)
	cache := f.cacheOf(t, "bad")
	first := f.h.enqueueValidation(t, 1)
	startWorker(t, Config{Host: f.h.host, Runner: f.x, Log: f.log})
	j := waitEnded(t, f.h.q, first)
	require.Equal(t, jobs.Failed, j.State)
	require.Equal(t, "construction", j.ErrorClass, "not execution: a validator's broken cache is no vote")
	require.Contains(t, j.Error, "twice in a row")
	st := cache.Stats()
	require.EqualValues(t, 2, st.Preparations, "prepared, discarded, prepared once more")
	require.EqualValues(t, 2, st.ConstructionRetries)

	second := f.h.enqueueValidation(t, 2)
	j = waitEnded(t, f.h.q, second)
	require.Equal(t, "construction", j.ErrorClass)
	require.EqualValues(t, 2, cache.Stats().Preparations, "a broken model is not prepared again")
	require.Equal(t, 1, strings.Count(f.logs.String(), "model marked broken on this executor"))
}

// waitEnded waits for job id to succeed or fail.
func waitEnded(t *testing.T, q *jobs.Queue, id string) jobs.Job {
	t.Helper()
	var j jobs.Job
	require.Eventually(t, func() bool {
		var err error
		j, err = q.Get(context.Background(), id)
		return err == nil && (j.State == jobs.Succeeded || j.State == jobs.Failed)
	}, 15*time.Second, 10*time.Millisecond, "job %s never ended", id)
	return j
}

// Each preparing executor's cache reports its metrics under its own name,
// so two caches share one registry.
func TestWorkerArtifactMetricsByExecutor(t *testing.T) {
	t.Parallel()
	bin, err := os.Executable()
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "worker.toml")
	block := func(name string) string {
		return fmt.Sprintf("[[executor]]\nname = %q\nbin = %q\nprepare = true\n[executor.envs]\nDEVSHARD_WORKER_TEST_MODE = \"builtin\"\n\n", name, bin)
	}
	require.NoError(t, os.WriteFile(path, []byte("[host]\nurl = \"http://127.0.0.1:1\"\n\n"+block("a")+block("b")), 0o600))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	x, err := StartExecutors(context.Background(), cfg, slog.New(slog.DiscardHandler), reg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, x.Stop(context.Background())) })
	_, err = x.Run(context.Background(), Task{Kind: "validation", Request: question(1)}, nil)
	require.NoError(t, err)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	executors := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "devshard_artifacts_preparations_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "executor" {
					executors[lp.GetValue()] = true
				}
			}
		}
	}
	require.Equal(t, map[string]bool{"a": true, "b": true}, executors)
}
