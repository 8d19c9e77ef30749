package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devshard/devshard/artifacts"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/executor/ndjson"
	"github.com/devshard/devshard/worker/child"
	"github.com/devshard/devshard/worker/pool"
)

// Executors are a worker's executor children and the choice among them
// (worker/pool): the Runner of `devshard worker`.
type Executors struct {
	children []*child.Child
	pool     *pool.Pool[*child.Child]
	kinds    []string
	slots    int
	log      *slog.Logger
	// caches keep the artifacts of the executors that prepare, by child.
	caches map[*child.Child]*artifacts.Cache
	models map[string]ModelConfig

	mu     sync.Mutex
	broken map[string]error // models that failed construction twice in a row, by "executor/model"
}

// StartExecutors starts the children cfg lists and waits for each one's
// ready line. One that prints none in time is reported in the log and
// kept under supervision, which starts it again after a pause; the worker
// serves with the others meanwhile. Only when none can start is it an
// error. The artifact caches' metrics go to reg (nil: none), labelled
// with their executor.
func StartExecutors(ctx context.Context, cfg *FileConfig, log *slog.Logger, reg prometheus.Registerer) (*Executors, error) {
	x := &Executors{log: log, caches: map[*child.Child]*artifacts.Cache{}, models: map[string]ModelConfig{}, broken: map[string]error{}}
	for _, m := range cfg.Models {
		x.models[m.Name] = m
	}
	var errs []error
	for _, ec := range cfg.Executors {
		kinds := make([]ndjson.Kind, len(ec.Kinds))
		for i, k := range ec.Kinds {
			kinds[i] = ndjson.Kind(k)
		}
		c, err := child.New(child.Config{
			Name: ec.Name, Bin: cfg.Program(ec.Bin), Args: ec.Args, Env: ec.Envs, Kinds: kinds, Models: ec.Models,
			Concurrent: ec.Concurrent, Weight: ec.Weight, ReadyTimeout: time.Duration(ec.ReadyTimeout),
			TempDir: cfg.TempDir, Logger: log,
		})
		if err != nil {
			x.Stop(context.Background())
			return nil, err
		}
		x.children = append(x.children, c)
		if ec.Prepare {
			var r prometheus.Registerer
			if reg != nil {
				r = prometheus.WrapRegistererWith(prometheus.Labels{"executor": ec.Name}, reg)
			}
			cache, err := openCache(cfg, ec, r)
			if err != nil {
				x.Stop(context.Background())
				return nil, fmt.Errorf("executor %s: %w", ec.Name, err)
			}
			x.caches[c] = cache
		}
		for _, k := range ec.Kinds {
			if !slices.Contains(x.kinds, k) {
				x.kinds = append(x.kinds, k)
			}
		}
		x.slots += ec.Concurrent
	}
	for _, c := range x.children {
		if err := c.Start(ctx); err != nil {
			log.Error("executor not ready; it is started again after a pause, and the others serve meanwhile", "executor", c.Name(), "err", err)
			errs = append(errs, err)
		}
	}
	if len(errs) == len(x.children) {
		x.Stop(context.Background())
		return nil, errors.Join(errs...)
	}
	x.pool = pool.New(x.children...)
	return x, nil
}

// Kinds are the job kinds some executor takes.
func (x *Executors) Kinds() []string { return x.kinds }

// Slots is how many jobs the executors run at once.
func (x *Executors) Slots() int { return x.slots }

// Run runs t on an executor the pool draws, waiting for a free slot.
func (x *Executors) Run(ctx context.Context, t Task, onPieces Pieces) (executor.Result, error) {
	c, release, err := x.pool.Acquire(ctx, ndjson.Kind(t.Kind), t.Request.Model)
	if err != nil {
		var none *pool.NoExecutorError
		if errors.As(err, &none) {
			return executor.Result{}, classedError{"no_executor", err}
		}
		return executor.Result{}, err
	}
	defer release()
	task := ndjson.Task{Kind: ndjson.Kind(t.Kind), Request: t.Request}
	cache := x.caches[c]
	if cache == nil {
		out, err := c.Do(ctx, task, onPieces)
		return result(out, err)
	}
	key := c.Name() + "/" + t.Request.Model
	x.mu.Lock()
	broken := x.broken[key]
	x.mu.Unlock()
	if broken != nil {
		return executor.Result{}, classedError{string(ndjson.ClassConstruction), broken}
	}
	// The retry rule (docs/artifacts.md): an artifact that cannot be
	// loaded is discarded and prepared once more; a second construction
	// error in a row is this model's deterministic error on this
	// executor, which takes no more of its jobs until the worker restarts.
	for try := 1; ; try++ {
		h, err := cache.Acquire(ctx, t.Request.Model, func(ctx context.Context, tmp string) error {
			m := x.models[t.Request.Model]
			_, err := c.Do(ctx, ndjson.Task{Kind: ndjson.KindPrepare, Prepare: &executor.Preparation{
				Model: t.Request.Model, Source: m.Source, SourceSHA256: m.SHA256, Out: tmp}}, nil)
			return err
		})
		if err != nil {
			return executor.Result{}, classify(err, ndjson.ClassPreparation)
		}
		task.Artifact = h.Path()
		out, err := c.Do(ctx, task, onPieces)
		h.Release()
		var ce *child.Error
		if !errors.As(err, &ce) || ce.Class != ndjson.ClassConstruction {
			return result(out, err)
		}
		if derr := cache.Discard(t.Request.Model); derr != nil {
			x.log.Warn("discard an artifact that failed to load", "executor", c.Name(), "model", t.Request.Model, "err", derr)
		}
		if try == 2 {
			err = fmt.Errorf("model %s cannot be constructed on executor %s, twice in a row (a deterministic error: it takes no more of this model's jobs until the worker restarts): %w", t.Request.Model, c.Name(), err)
			x.mu.Lock()
			x.broken[key] = err
			x.mu.Unlock()
			x.log.Error("model marked broken on this executor", "executor", c.Name(), "model", t.Request.Model, "err", err)
			return executor.Result{}, classedError{string(ndjson.ClassConstruction), err}
		}
		x.log.Warn("an artifact failed to load; preparing it again", "executor", c.Name(), "model", t.Request.Model, "err", err)
	}
}

// result turns a child's answer into the worker's.
func result(out ndjson.Output, err error) (executor.Result, error) {
	if err != nil {
		return executor.Result{}, classify(err, "")
	}
	return executor.Result{Text: out.Text, Usage: out.Usage, FinishReason: out.FinishReason}, nil
}

// classify gives err its class: a child's own, a preparation's, or
// fallback (none: the error as it is).
func classify(err error, fallback ndjson.Class) error {
	var ce *child.Error
	if errors.As(err, &ce) {
		class := string(ce.Class)
		if ce.Class == child.ClassNotReady {
			class = ClassExecutorDied // lost with its executor: another try may run
		}
		return classedError{class, err}
	}
	var pe *artifacts.PrepareError
	if errors.As(err, &pe) || fallback != "" {
		return classedError{string(ndjson.ClassPreparation), err}
	}
	return err
}

// openCache opens the artifact cache of executor ec: its own directory
// under the cache's, holding only the artifacts of its environment.
func openCache(cfg *FileConfig, ec ExecutorConfig, reg prometheus.Registerer) (*artifacts.Cache, error) {
	bin, err := exec.LookPath(cfg.Program(ec.Bin))
	if err != nil {
		return nil, fmt.Errorf("find the executor's program to hash it: %w", err)
	}
	env, err := artifacts.CurrentEnv(bin, strings.Join(ec.Args, "\x00"))
	if err != nil {
		return nil, err
	}
	return artifacts.Open(filepath.Join(cfg.Path(cfg.Cache.Dir), ec.Name), env, artifacts.Options{MaxBytes: cfg.Cache.MaxBytes, Registerer: reg})
}

// Stop stops every child.
func (x *Executors) Stop(ctx context.Context) error {
	var errs []error
	for _, c := range x.children {
		if err := c.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// classedError is an error with the class the worker reports it under.
type classedError struct {
	class string
	err   error
}

func (e classedError) Error() string { return e.err.Error() }
func (e classedError) Class() string { return e.class }
func (e classedError) Unwrap() error { return e.err }
