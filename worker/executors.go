package worker

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

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
}

// StartExecutors starts the children cfg lists and waits for each one's
// ready line. One that prints none in time is reported in the log and
// kept under supervision, which starts it again after a pause; the worker
// serves with the others meanwhile. Only when none can start is it an
// error.
func StartExecutors(ctx context.Context, cfg *FileConfig, log *slog.Logger) (*Executors, error) {
	x := &Executors{}
	var errs []error
	for _, ec := range cfg.Executors {
		kinds := make([]ndjson.Kind, len(ec.Kinds))
		for i, k := range ec.Kinds {
			kinds[i] = ndjson.Kind(k)
		}
		c, err := child.New(child.Config{
			Name: ec.Name, Bin: cfg.Path(ec.Bin), Args: ec.Args, Env: ec.Envs, Kinds: kinds, Models: ec.Models,
			Concurrent: ec.Concurrent, Weight: ec.Weight, ReadyTimeout: time.Duration(ec.ReadyTimeout),
			TempDir: cfg.TempDir, Logger: log,
		})
		if err != nil {
			x.Stop(context.Background())
			return nil, err
		}
		x.children = append(x.children, c)
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
func (x *Executors) Run(ctx context.Context, t Task, onPiece func(string) error) (executor.Result, error) {
	c, release, err := x.pool.Acquire(ctx, ndjson.Kind(t.Kind), t.Request.Model)
	if err != nil {
		var none *pool.NoExecutorError
		if errors.As(err, &none) {
			return executor.Result{}, classedError{"no_executor", err}
		}
		return executor.Result{}, err
	}
	defer release()
	out, err := c.Do(ctx, ndjson.Task{Kind: ndjson.Kind(t.Kind), Request: t.Request}, onPiece)
	if err != nil {
		var ce *child.Error
		if errors.As(err, &ce) {
			class := string(ce.Class)
			if ce.Class == child.ClassNotReady {
				class = ClassExecutorDied // lost with its executor: another try may run
			}
			return executor.Result{}, classedError{class, err}
		}
		return executor.Result{}, err
	}
	return executor.Result{Text: out.Text, Usage: out.Usage, FinishReason: out.FinishReason}, nil
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
