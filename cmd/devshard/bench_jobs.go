package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/devshard/devshard/internal/pgcluster"
	"github.com/devshard/devshard/internal/riverbench"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/postgres"
	"github.com/devshard/devshard/jobs/sqlite"
)

type benchJobsOptions struct {
	rounds, jobs, workers, samples int
}

func newBenchJobsCommand() *cobra.Command {
	var o benchJobsOptions
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "Job queue: jobs/s on Postgres against River, jobs/s on SQLite, wake-up latency",
		Long: `jobs measures the host's job queue (package jobs):

  - Postgres: --jobs jobs inserted before the clock starts, then --workers
    workers each claiming a job and finishing it, until none is left. Each
    job is one Claim and one Finish, each durable before it returns
    (concurrent ones share a statement and a commit). Then the same in
    River's shape ("pool", the figure the target is on): one claimer takes
    up to --workers jobs a statement (ClaimN, one durable commit), hands
    each finish on and claims again; the run ends once every finish is
    durable. River (riverqueue/river) works the same number
    of jobs on the same cluster in the same round, with a client of
    --workers workers that return at once, its fetches and completions
    batched as River does. Each side has --workers pooled connections and
    one more that listens for notifications. The cluster (a throwaway one,
    pgcluster: needs initdb and pg_ctl) runs with fsync and
    synchronous_commit on while it is measured; the inserts before run with
    fsync off. The ratio is our jobs/s over River's in the same round.
  - SQLite: the same workload on jobs/sqlite with synchronous=FULL.
  - Wake-up latency: from the call to Enqueue until a worker already
    waiting in ClaimWait holds the job, --samples times one after another,
    on one SQLite queue, on one Postgres queue, and from one Postgres queue
    to another on the same schema (woken by LISTEN/NOTIFY): p50 and p99.

Each figure is measured --rounds times, interleaved, and the median kept;
the ratio kept is the median of the rounds' ratios.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.rounds < 1 || o.jobs < 1 || o.workers < 1 || o.samples < 1 {
				return fmt.Errorf("--rounds, --jobs, --workers and --samples must be at least 1, got %d, %d, %d and %d",
					o.rounds, o.jobs, o.workers, o.samples)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return benchJobs(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	cmd.Flags().IntVar(&o.rounds, "rounds", 3, "measure each figure this many times, interleaved, and keep the median")
	cmd.Flags().IntVar(&o.jobs, "jobs", 3000, "jobs each side works per round")
	cmd.Flags().IntVar(&o.workers, "workers", 8, "workers claiming at once, on each side")
	cmd.Flags().IntVar(&o.samples, "samples", 200, "enqueues per wake-up latency measurement")
	return cmd
}

// phaseTimeout bounds one measured phase, so a stuck run fails instead of
// hanging.
const phaseTimeout = 5 * time.Minute

func benchJobs(ctx context.Context, out, progress io.Writer, o benchJobsOptions) error {
	root, err := os.MkdirTemp("", "devshard-bench-jobs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)

	fmt.Fprintln(progress, "starting a throwaway Postgres cluster...")
	pg, err := startCluster(ctx)
	if err != nil {
		return err
	}
	defer pg.Remove()
	dsn := pg.DSN("bench")

	// Inserting is not what is measured: with fsync off it takes a moment.
	fmt.Fprintf(progress, "inserting %d jobs per side and round...\n", o.jobs)
	for r := range o.rounds {
		if err := fillOurs(ctx, dsn, oursSchema(r), o); err != nil {
			return err
		}
		if err := fillOurs(ctx, dsn, poolSchema(r), o); err != nil {
			return err
		}
		if err := riverbench.Prepare(ctx, riverConfig(dsn, r, o, progress), o.jobs); err != nil {
			return err
		}
	}
	if err := setDurable(ctx, pg.DSN("postgres")); err != nil {
		return err
	}

	var ours, pool, river, versus, versusPool, lite []float64
	var riverTail []time.Duration
	wait := map[string][]time.Duration{}
	for r := range o.rounds {
		// Alternate which side goes first, so neither always meets the
		// cluster fresh or tired.
		sides := []func() error{
			func() error {
				v, err := oursPostgres(ctx, dsn, oursSchema(r), o)
				if err != nil {
					return err
				}
				ours = append(ours, v)
				return nil
			},
			func() error {
				v, err := oursPool(ctx, dsn, poolSchema(r), o)
				if err != nil {
					return err
				}
				pool = append(pool, v)
				return nil
			},
			func() error {
				t, err := riverbench.Work(ctx, riverConfig(dsn, r, o, progress), o.jobs, phaseTimeout)
				if err != nil {
					return err
				}
				river = append(river, float64(o.jobs)/t.Completed.Seconds())
				riverTail = append(riverTail, t.Completed-t.Worked)
				return nil
			},
		}
		if r%2 == 1 {
			slices.Reverse(sides)
		}
		for _, side := range sides {
			// Each side starts with nothing left to write back.
			if err := checkpoint(ctx, dsn); err != nil {
				return err
			}
			if err := side(); err != nil {
				return err
			}
		}
		v, err := oursSQLite(ctx, filepath.Join(root, fmt.Sprintf("claims-%d.db", r)), o)
		if err != nil {
			return err
		}
		lite = append(lite, v)
		if err := waitLatencies(ctx, wait, root, dsn, r, o.samples); err != nil {
			return err
		}
		// The two sides of a round ran seconds apart, so a busy minute of
		// the machine hits both: their ratio is steadier than either figure.
		versus = append(versus, ours[r]/river[r])
		versusPool = append(versusPool, pool[r]/river[r])
		fmt.Fprintf(progress, "round %d/%d: postgres ours %.0f jobs/s, ours as a pool %.0f, river %.0f jobs/s (ratios %.3f, %.3f); sqlite %.0f jobs/s; wake-up p50 sqlite %s, postgres %s, notify %s\n",
			r+1, o.rounds, ours[r], pool[r], river[r], versus[r], versusPool[r], lite[r],
			ms(wait["sqlite_p50"][r]), ms(wait["postgres_p50"][r]), ms(wait["postgres_notify_p50"][r]))
	}

	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	fmt.Fprintf(out, "# postgres: %d jobs inserted per side before the clock starts; %d workers and %d pooled connections a side, plus one listening; fsync on, synchronous_commit on\n",
		o.jobs, o.workers, o.workers)
	fmt.Fprintln(out, "# ours: per job one Claim and one Finish, each durable before it returns; concurrent claims and finishes share a statement and a commit (group commit)")
	fmt.Fprintf(out, "# river: per fetch up to %d jobs in one statement (one commit); completions committed in batches of up to 5,000 every 50-250 ms\n", o.workers)
	fmt.Fprintf(out, "BENCH postgres_ours %.0f jobs/s\n", med(ours))
	fmt.Fprintf(out, "# ours_pool: River's shape on our queue: one claimer takes up to %d jobs a statement (ClaimN, one durable commit), hands each finish on, and claims again; the run ends once every finish is durable\n", o.workers)
	fmt.Fprintf(out, "BENCH postgres_ours_pool %.0f jobs/s\n", med(pool))
	fmt.Fprintf(out, "BENCH postgres_river %.0f jobs/s\n", med(river))
	fmt.Fprintln(out, "# river_last_batch_wait: from the last job worked to its completion committed, counted in postgres_river (the completer's tick)")
	fmt.Fprintf(out, "BENCH river_last_batch_wait %s ms\n", ms(medianOf(riverTail)))
	fmt.Fprintln(out, "# sqlite: the same workload as postgres_ours on jobs/sqlite, synchronous=FULL")
	fmt.Fprintf(out, "BENCH sqlite_ours %.0f jobs/s\n", med(lite))
	fmt.Fprintf(out, "# wake_*: from the call to Enqueue until a worker waiting in ClaimWait holds the job, %d enqueues one at a time; notify: enqueued on one queue, claimed on another over the same schema\n", o.samples)
	for _, name := range waitFigures {
		fmt.Fprintf(out, "BENCH wake_%s %s ms\n", name, ms(medianOf(wait[name])))
	}
	fmt.Fprintln(out, "# ratios: the median over the rounds of each round's ratio; the target is on the pool, which works as River's client does, with the same durability")
	report(out, "postgres_ours/river", med(versus))
	ratio(out, "postgres_ours_pool/river", med(versusPool), ">=", 1)
	return nil
}

// waitFigures are the wake-up latency figures, in the order printed.
var waitFigures = []string{"sqlite_p50", "sqlite_p99", "postgres_p50", "postgres_p99", "postgres_notify_p50", "postgres_notify_p99"}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1e3) }

func oursSchema(round int) string { return fmt.Sprintf("ours_%d", round) }

func poolSchema(round int) string { return fmt.Sprintf("ourspool_%d", round) }

func riverConfig(dsn string, round int, o benchJobsOptions, log io.Writer) riverbench.Config {
	return riverbench.Config{DSN: dsn, Schema: fmt.Sprintf("river_%d", round), Workers: o.workers, Conns: int32(o.workers), Log: log}
}

// startCluster starts a throwaway cluster with a database "bench". It
// runs with fsync off until setDurable turns it on.
func startCluster(ctx context.Context) (*pgcluster.Cluster, error) {
	// A directory of its own: when we run as root, pgcluster hands it to
	// the postgres user, who must be able to reach it.
	dir, err := os.MkdirTemp("", "devshard-bench-jobs-pg-")
	if err != nil {
		return nil, err
	}
	c, err := pgcluster.Open(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := c.Start(); err != nil {
		c.Remove()
		return nil, err
	}
	if _, err := c.CreateDatabase(ctx, "bench"); err != nil {
		c.Remove()
		return nil, err
	}
	return c, nil
}

// setDurable turns the cluster's fsync on and returns once the server
// runs with it and with synchronous_commit on (its default): then every
// commit flushes the WAL to disk, as in production.
func setDurable(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, q := range []string{"ALTER SYSTEM SET fsync = on", "SELECT pg_reload_conf()"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var fsync, sync string
		err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit')").Scan(&fsync, &sync)
		if err == nil && fsync == "on" && sync == "on" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after reload fsync is %s and synchronous_commit %s (%v); want both on", fsync, sync, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkpoint(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "CHECKPOINT")
	return err
}

func openOurs(ctx context.Context, dsn, schema string, o benchJobsOptions) (*jobs.Queue, error) {
	d, err := postgres.Open(ctx, postgres.Config{DSN: dsn, Schema: schema, MaxConns: int32(o.workers)})
	if err != nil {
		return nil, err
	}
	return jobs.New(d, jobs.Options{})
}

// fillOurs enqueues o.jobs jobs in schema, o.workers at a time.
func fillOurs(ctx context.Context, dsn, schema string, o benchJobsOptions) error {
	q, err := openOurs(ctx, dsn, schema, o)
	if err != nil {
		return err
	}
	defer q.Close()
	return enqueue(ctx, q, o.jobs, o.workers)
}

// enqueue adds n jobs with the inputs 0 to n-1, from the given number of
// goroutines.
func enqueue(ctx context.Context, q *jobs.Queue, n, goroutines int) error {
	next := make(chan int)
	go func() {
		defer close(next)
		for i := range n {
			next <- i
		}
	}()
	return inParallel(goroutines, func(int) error {
		for i := range next {
			if _, _, err := q.Enqueue(ctx, jobs.KindInference, input(i)); err != nil {
				return err
			}
		}
		return nil
	})
}

func input(i int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(i)) }

// inParallel runs fn(0) to fn(n-1) at once and joins their errors.
func inParallel(n int, fn func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// oursPostgres works the jobs fillOurs put in schema and returns jobs/s.
func oursPostgres(ctx context.Context, dsn, schema string, o benchJobsOptions) (float64, error) {
	q, err := openOurs(ctx, dsn, schema, o)
	if err != nil {
		return 0, err
	}
	defer q.Close()
	return drain(ctx, q, o.jobs, o.workers)
}

// oursSQLite fills a fresh queue file with o.jobs jobs (synchronous=NORMAL:
// the inserts are not measured), then works them with synchronous=FULL and
// returns jobs/s.
func oursSQLite(ctx context.Context, path string, o benchJobsOptions) (float64, error) {
	d, err := sqlite.Open(ctx, path, sqlite.Options{Synchronous: "NORMAL"})
	if err != nil {
		return 0, err
	}
	q, err := jobs.New(d, jobs.Options{})
	if err != nil {
		return 0, err
	}
	err = enqueue(ctx, q, o.jobs, 1)
	if cerr := q.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if d, err = sqlite.Open(ctx, path, sqlite.Options{Synchronous: "FULL"}); err != nil {
		return 0, err
	}
	if q, err = jobs.New(d, jobs.Options{}); err != nil {
		return 0, err
	}
	defer q.Close()
	return drain(ctx, q, o.jobs, o.workers)
}

// oursPool works the jobs of schema as River's client does: one claimer
// fetches for all workers at once, and the finishes are handed on.
func oursPool(ctx context.Context, dsn, schema string, o benchJobsOptions) (float64, error) {
	q, err := openOurs(ctx, dsn, schema, o)
	if err != nil {
		return 0, err
	}
	defer q.Close()
	return drainPool(ctx, q, o.jobs, o.workers)
}

// drainPool claims up to workers jobs a statement until none is ready,
// finishing each in the background as River's workers hand theirs to its
// completer, and returns jobs/s once every finish is durable.
func drainPool(ctx context.Context, q *jobs.Queue, n, workers int) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	start := time.Now()
	var (
		finishes sync.WaitGroup
		mu       sync.Mutex
		errs     error
	)
	for {
		cs, err := q.ClaimN(ctx, "bench-pool", workers)
		if err != nil {
			errs = errors.Join(errs, err)
			break
		}
		if len(cs) == 0 {
			break
		}
		for _, c := range cs {
			finishes.Go(func() {
				if err := q.Finish(ctx, c.Lease, nil); err != nil {
					mu.Lock()
					errs = errors.Join(errs, err)
					mu.Unlock()
				}
			})
		}
	}
	finishes.Wait()
	elapsed := time.Since(start)
	if errs != nil {
		return 0, errs
	}
	count, err := q.Count(ctx)
	if err != nil {
		return 0, err
	}
	if count[jobs.Succeeded] != n || count[jobs.Ready]+count[jobs.Running]+count[jobs.Failed] != 0 {
		return 0, fmt.Errorf("after the run the queue holds %v; want %d succeeded and nothing else", count, n)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// drain has workers claim and finish jobs until none is ready, checks that
// each of the n jobs succeeded once, and returns jobs/s.
func drain(ctx context.Context, q *jobs.Queue, n, workers int) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	start := time.Now()
	err := inParallel(workers, func(w int) error {
		worker := fmt.Sprintf("bench-%d", w)
		for {
			c, err := q.Claim(ctx, worker)
			if err != nil || c == nil {
				return err
			}
			if err := q.Finish(ctx, c.Lease, nil); err != nil {
				return err
			}
		}
	})
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	count, err := q.Count(ctx)
	if err != nil {
		return 0, err
	}
	if count[jobs.Succeeded] != n || count[jobs.Ready]+count[jobs.Running]+count[jobs.Failed] != 0 {
		return 0, fmt.Errorf("after the run the queue holds %v; want %d succeeded and nothing else", count, n)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// waitLatencies measures the three wake-up paths of round r and appends
// their p50 and p99 to wait.
func waitLatencies(ctx context.Context, wait map[string][]time.Duration, root, dsn string, r, samples int) error {
	// Only a wake-up may end a wait, not the safety-net poll.
	opts := jobs.Options{PollInterval: time.Hour}
	record := func(name string, lat []time.Duration) {
		slices.Sort(lat)
		wait[name+"_p50"] = append(wait[name+"_p50"], percentile(lat, 0.50))
		wait[name+"_p99"] = append(wait[name+"_p99"], percentile(lat, 0.99))
	}

	d, err := sqlite.Open(ctx, filepath.Join(root, fmt.Sprintf("wait-%d.db", r)), sqlite.Options{Synchronous: "FULL"})
	if err != nil {
		return err
	}
	lq, err := jobs.New(d, opts)
	if err != nil {
		return err
	}
	lat, err := wakeLatency(ctx, lq, lq, samples)
	lq.Close()
	if err != nil {
		return fmt.Errorf("wake-up on sqlite: %w", err)
	}
	record("sqlite", lat)

	open := func() (*jobs.Queue, error) {
		d, err := postgres.Open(ctx, postgres.Config{DSN: dsn, Schema: fmt.Sprintf("wait_%d", r), MaxConns: 2})
		if err != nil {
			return nil, err
		}
		return jobs.New(d, opts)
	}
	a, err := open()
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := open()
	if err != nil {
		return err
	}
	defer b.Close()
	if lat, err = wakeLatency(ctx, a, a, samples); err != nil {
		return fmt.Errorf("wake-up on postgres: %w", err)
	}
	record("postgres", lat)
	if lat, err = wakeLatency(ctx, a, b, samples); err != nil {
		return fmt.Errorf("wake-up on postgres through NOTIFY: %w", err)
	}
	record("postgres_notify", lat)
	return nil
}

// settle is how long the enqueuer waits, after the worker finished its
// previous job, before it enqueues the next: time for the worker to be
// back waiting in ClaimWait (one empty claim).
const settle = 5 * time.Millisecond

// wakeLatency enqueues samples jobs on from, one at a time, each once a
// worker on to is waiting in ClaimWait, and returns the time from each
// Enqueue call until the worker's ClaimWait returned the job.
func wakeLatency(ctx context.Context, from, to *jobs.Queue, samples int) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	type claimed struct {
		id  string
		at  time.Time
		err error
	}
	// Buffered, so the worker never blocks on a result nobody reads.
	claims := make(chan claimed, samples)
	go func() {
		for range samples {
			c, err := to.ClaimWait(ctx, "waiter", nil, time.Minute)
			at := time.Now()
			if err == nil && c == nil {
				err = errors.New("no job came within a minute")
			}
			if err == nil {
				err = to.Finish(ctx, c.Lease, nil)
			}
			if err != nil {
				claims <- claimed{err: err}
				return
			}
			claims <- claimed{id: c.Job.ID, at: at}
		}
	}()
	// Unique inputs across runs on one queue: the job ids must be new.
	base := time.Now().UnixNano()
	lat := make([]time.Duration, 0, samples)
	for i := range samples {
		time.Sleep(settle)
		start := time.Now()
		j, _, err := from.Enqueue(ctx, jobs.KindInference, input(int(base)+i))
		if err != nil {
			cancel()
			<-claims
			return nil, err
		}
		c := <-claims
		if c.err != nil {
			return nil, c.err
		}
		if c.id != j.ID {
			return nil, fmt.Errorf("the worker claimed job %s, not the one just enqueued (%s)", jobs.ShortID(c.id), jobs.ShortID(j.ID))
		}
		lat = append(lat, c.at.Sub(start))
	}
	return lat, nil
}

// percentile is the p-th quantile of sorted, by the nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}
