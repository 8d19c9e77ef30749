// Package riverbench works a batch of jobs through River
// (github.com/riverqueue/river), the Postgres job queue that `devshard
// bench jobs` compares package jobs with, on the same cluster in the same
// run. It does what River's own `river bench` does in its burn-down mode:
// n jobs inserted before the clock starts, a client whose worker returns at
// once, and the rate counted from the client's completion events, so a job
// counts once its completion is committed.
//
// Per job River makes no round trip of its own: its producer fetches up to
// as many jobs as it has free workers in one statement (UPDATE … FOR UPDATE
// SKIP LOCKED, one commit per fetch), and its completer marks the finished
// jobs completed in batches (one UPDATE, one commit, per batch of up to
// 5,000), every 50 ms once 100 are waiting and every 250 ms otherwise. A
// worker's slot is free again as soon as its completion is queued, before
// that batch commits.
package riverbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// Config says where River's tables live and how the client works them.
type Config struct {
	// DSN is the database's connection URL.
	DSN string
	// Schema holds River's tables; Prepare creates it.
	Schema string
	// Workers is the client's MaxWorkers on its one queue.
	Workers int
	// Conns is the pool size. River's notifier takes one more connection
	// for LISTEN out of the pool (pgxpool's Hijack), as a jobs.Queue
	// opens one for LISTEN beside its pool.
	Conns int32
	// Log receives River's own warnings and errors.
	Log io.Writer
}

// The fetch settings of River's own benchmark (cmd/river/riverbench),
// which its authors tuned for throughput; the defaults (100 ms and 1 s)
// are slower.
const (
	fetchCooldown     = 2 * time.Millisecond
	fetchPollInterval = 20 * time.Millisecond
)

// insertBatch is how many jobs one InsertManyFast call copies in.
const insertBatch = 5_000

// Prepare creates cfg.Schema, migrates River's tables into it and inserts n
// available jobs, each of which the client works by returning at once. The
// inserts are not timed; run them with the cluster's fsync off if speed
// matters.
func Prepare(ctx context.Context, cfg Config, n int) error {
	pool, err := pgxpool.New(ctx, cfg.DSN)
	if err != nil {
		return fmt.Errorf("river: connect: %w", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{cfg.Schema}.Sanitize()); err != nil {
		return fmt.Errorf("river: create schema %s: %w", cfg.Schema, err)
	}
	driver := riverpgxv5.New(pool)
	m, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: cfg.Schema, Logger: logger(cfg.Log)})
	if err != nil {
		return fmt.Errorf("river: migrator: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river: migrate schema %s: %w", cfg.Schema, err)
	}
	// An insert-only client: no queues, no workers.
	client, err := river.NewClient(driver, &river.Config{Schema: cfg.Schema, Logger: logger(cfg.Log)})
	if err != nil {
		return fmt.Errorf("river: client: %w", err)
	}
	params := make([]river.InsertManyParams, 0, insertBatch)
	for i := range n {
		params = append(params, river.InsertManyParams{Args: Args{Num: i}})
		if len(params) == insertBatch || i == n-1 {
			if _, err := client.InsertManyFast(ctx, params); err != nil {
				return fmt.Errorf("river: insert jobs: %w", err)
			}
			params = params[:0]
		}
	}
	return nil
}

// Times are how long a run took, from the client's start.
type Times struct {
	// Completed is when the last of the n completions was committed: the
	// run's time, as River's own benchmark counts it.
	Completed time.Duration
	// Worked is when the last job's worker returned. The completer commits
	// a last batch of fewer than 100 on its next 250 ms tick, so Completed
	// minus Worked is that wait, a cost of a short run.
	Worked time.Duration
}

// Work starts a client on cfg.Schema, which Prepare filled with n jobs,
// and times it until the last of the n completions was committed. The
// clock starts before the client does, so it includes the client's
// start-up, as a Queue's workers include opening their connections.
func Work(ctx context.Context, cfg Config, n int, timeout time.Duration) (Times, error) {
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return Times{}, fmt.Errorf("river: %w", err)
	}
	pc.MaxConns = cfg.Conns
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return Times{}, fmt.Errorf("river: connect: %w", err)
	}
	defer pool.Close()
	w := &worker{}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema:            cfg.Schema,
		FetchCooldown:     fetchCooldown,
		FetchPollInterval: fetchPollInterval,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.Workers}},
		Workers:           workers,
		Logger:            logger(cfg.Log),
	})
	if err != nil {
		return Times{}, fmt.Errorf("river: client: %w", err)
	}
	// Large enough that no event is dropped: a dropped event would leave
	// the count short and the run waiting.
	events, unsubscribe := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: n,
		Kinds:    []river.EventKind{river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled},
	})
	defer unsubscribe()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	w.start = start
	if err := client.Start(ctx); err != nil {
		return Times{}, fmt.Errorf("river: start: %w", err)
	}
	defer client.Stop(context.WithoutCancel(ctx))
	for done := 0; done < n; done++ {
		select {
		case e := <-events:
			if e == nil {
				return Times{}, fmt.Errorf("river: the client closed its events after %d of %d jobs completed", done, n)
			}
			if e.Kind != river.EventKindJobCompleted {
				return Times{}, fmt.Errorf("river: job %d ended %s, not completed", e.Job.ID, e.Kind)
			}
		case <-ctx.Done():
			return Times{}, fmt.Errorf("river: %d of %d jobs completed after %s", done, n, time.Since(start).Round(time.Millisecond))
		}
	}
	return Times{Completed: time.Since(start), Worked: time.Duration(w.last.Load())}, nil
}

func logger(w io.Writer) *slog.Logger {
	if w == nil {
		w = io.Discard
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Args are one benchmark job's arguments.
type Args struct {
	Num int `json:"num"`
}

// Kind implements river.JobArgs.
func (Args) Kind() string { return "bench" }

// worker completes every job at once, noting when it last did.
type worker struct {
	river.WorkerDefaults[Args]
	start time.Time    // set before the client starts
	last  atomic.Int64 // since start, in nanoseconds
}

func (w *worker) Work(context.Context, *river.Job[Args]) error {
	since := int64(time.Since(w.start))
	for {
		last := w.last.Load()
		if since <= last || w.last.CompareAndSwap(last, since) {
			return nil
		}
	}
}
