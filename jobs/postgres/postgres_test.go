package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/jobstest"
	"github.com/devshard/devshard/jobs/postgres"
)

// TestPostgres runs every test on one cluster and one database, each test
// in a schema of its own.
func TestPostgres(t *testing.T) {
	t.Parallel()
	dsn := cluster(t)
	t.Run("Conformance", func(t *testing.T) {
		jobstest.Run(t, func(t testing.TB) *jobstest.Target { return target(t, dsn) })
	})
	for name, fn := range map[string]func(*testing.T, string){
		"OneRescuerAtATime":     testOneRescuerAtATime,
		"NotifyWakesOtherQueue": testNotifyWakesOtherQueue,
		"ListenWakesOnceReady":  testListenWakesOnceReady,
		"ConcurrentMigrations":  testConcurrentMigrations,
		"OwnSchema":             testOwnSchema,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, dsn)
		})
	}
}

// cluster starts a throwaway cluster and returns the DSN of a database of
// its own.
func cluster(t testing.TB) string {
	c := pgtest.Start(t)
	return c.CreateDatabase(t, "jobs")
}

var schemaSeq atomic.Int64

// newSchema names a schema of its own for one test.
func newSchema(t testing.TB) string {
	name := fmt.Sprintf("t%d_%s", schemaSeq.Add(1), strings.ToLower(strings.NewReplacer("/", "_", "=", "_").Replace(t.Name())))
	return name[:min(len(name), 48)]
}

// target is a fresh schema; queues opened on it share it.
func target(t testing.TB, dsn string) *jobstest.Target {
	schema := newSchema(t)
	return &jobstest.Target{
		Open: func(t testing.TB, opts jobs.Options) *jobs.Queue { return open(t, dsn, schema, opts) },
		Driver: func(t testing.TB) jobs.Driver {
			d, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn, Schema: schema})
			require.NoError(t, err)
			t.Cleanup(func() { d.Close() })
			return d
		},
	}
}

func open(t testing.TB, dsn, schema string, opts jobs.Options) *jobs.Queue {
	t.Helper()
	d, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn, Schema: schema})
	require.NoError(t, err)
	q, err := jobs.New(d, opts)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// Of two hosts sharing one queue, one rescues at a time: while a pass
// runs, the other host's pass is skipped and changes nothing; the running
// pass does the work.
func testOneRescuerAtATime(t *testing.T, dsn string) {
	ctx := t.Context()
	schema := newSchema(t)
	clock := jobstest.NewClock()
	opts := jobs.Options{Now: clock.Now, PollInterval: time.Minute}
	a, b := open(t, dsn, schema, opts), open(t, dsn, schema, opts)

	finished, _, err := a.Enqueue(ctx, jobs.KindValidation, []byte("finished"))
	require.NoError(t, err)
	c, err := a.Claim(ctx, "w", jobs.KindValidation)
	require.NoError(t, err)
	require.NoError(t, a.Finish(ctx, c.Lease, []byte("r")))
	stuck, _, err := a.Enqueue(ctx, jobs.KindInference, []byte("stuck"))
	require.NoError(t, err)
	_, err = a.Claim(ctx, "w", jobs.KindInference)
	require.NoError(t, err)
	clock.Advance(a.Options().Lifetime + time.Second)

	// Hold the finished job's row, so a's pass blocks deleting it, inside
	// its rescue transaction and under the rescuer lock.
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, fmt.Sprintf("SELECT 1 FROM %s.jobs WHERE id = $1 FOR UPDATE", schema), finished.ID)
	require.NoError(t, err)

	var wg sync.WaitGroup
	var ra jobs.RescueReport
	var raErr error
	wg.Go(func() { ra, raErr = a.Rescue(ctx) })
	// Watched from outside the holding transaction: inside it,
	// pg_stat_activity would be one snapshot taken at first read.
	watch, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer watch.Close(context.Background())
	require.Eventually(t, func() bool {
		var waiting bool
		require.NoError(t, watch.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM jobs%')`).Scan(&waiting))
		return waiting
	}, 10*time.Second, 10*time.Millisecond, "a's pass reaches the held row")

	// Without the lock, b's pass would block on the held row as a's does.
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rb, err := b.Rescue(bctx)
	require.NoError(t, err, "b's pass must not wait for a's")
	require.True(t, rb.Skipped, "b's pass runs while a's holds the lock")
	require.Empty(t, rb.Retried)
	got, err := b.Get(ctx, stuck.ID)
	require.NoError(t, err)
	require.Equal(t, jobs.Running, got.State, "a skipped pass changes nothing (a's is not committed yet)")

	require.NoError(t, tx.Rollback(ctx))
	wg.Wait()
	require.NoError(t, raErr)
	require.False(t, ra.Skipped)
	require.Equal(t, []jobs.JobRef{{ID: stuck.ID, Kind: jobs.KindInference}}, ra.Retried)
	require.Equal(t, 1, ra.Expired)

	rb, err = b.Rescue(ctx)
	require.NoError(t, err)
	require.False(t, rb.Skipped, "the lock is free once a's pass committed")
	require.Empty(t, rb.Retried)
}

// A worker waiting on one host is woken by a job enqueued on another,
// through LISTEN/NOTIFY, long before its poll interval.
func testNotifyWakesOtherQueue(t *testing.T, dsn string) {
	ctx := t.Context()
	schema := newSchema(t)
	opts := jobs.Options{PollInterval: time.Minute}
	a, b := open(t, dsn, schema, opts), open(t, dsn, schema, opts)
	got := make(chan *jobs.Claim, 1)
	go func() {
		c, _ := b.ClaimWait(ctx, "w", nil, time.Minute)
		got <- c
	}()
	time.Sleep(200 * time.Millisecond) // b waits, and its listener is connected
	j, _, err := a.Enqueue(ctx, jobs.KindInference, []byte("p"))
	require.NoError(t, err)
	start := time.Now()
	select {
	case c := <-got:
		require.NotNil(t, c)
		require.Equal(t, j.ID, c.Job.ID)
		t.Logf("woken %v after the enqueue on the other queue", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("the other queue's waiting claimer was not woken by NOTIFY")
	}
}

// Hosts starting together migrate once, under the migration lock.
func testConcurrentMigrations(t *testing.T, dsn string) {
	schema := newSchema(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			d, err := postgres.Open(t.Context(), postgres.Config{DSN: dsn, Schema: schema})
			if err == nil {
				d.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// The queue keeps to its schema: its tables and goose's record of its
// migrations live there, and two schemas are two queues.
func testOwnSchema(t *testing.T, dsn string) {
	ctx := t.Context()
	one, two := newSchema(t), newSchema(t)
	a, b := open(t, dsn, one, jobs.Options{}), open(t, dsn, two, jobs.Options{})
	_, _, err := a.Enqueue(ctx, jobs.KindInference, []byte("p"))
	require.NoError(t, err)
	c, err := b.Claim(ctx, "w")
	require.NoError(t, err)
	require.Nil(t, c, "another schema is another queue")

	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var jobsTable, version, public *string
	require.NoError(t, conn.QueryRow(ctx, "SELECT to_regclass($1)::text, to_regclass($2)::text, to_regclass('public.goose_db_version')::text",
		one+".jobs", one+".goose_db_version").Scan(&jobsTable, &version, &public))
	require.NotNil(t, jobsTable)
	require.NotNil(t, version)
	require.Nil(t, public, "nothing in the public schema")

	_, err = postgres.Open(ctx, postgres.Config{DSN: dsn, Schema: "Bad-Name"})
	require.ErrorContains(t, err, `schema "Bad-Name"`)
}

// BenchmarkClaim: go test ./jobs/postgres -run '^$' -bench Claim
// The cluster commits durably (fsync on), as production does.
func BenchmarkClaim(b *testing.B) {
	c := pgtest.Start(b)
	c.Durable(b)
	dsn := c.CreateDatabase(b, "jobs")
	jobstest.BenchClaim(b, func(t testing.TB) *jobstest.Target { return target(t, dsn) })
}

// Listen wakes the waiters once its LISTEN holds, with no notification
// sent: a job committed before then notified nobody, and a waiter whose
// claim ran before that commit would otherwise sleep until its periodic
// look (a CI run of the wake-up bench, its poll an hour, waited a minute).
func testListenWakesOnceReady(t *testing.T, dsn string) {
	d, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn, Schema: newSchema(t)})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	woke := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Listen(ctx, func() {
			select {
			case woke <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-woke:
	case <-time.After(10 * time.Second):
		t.Fatal("Listen did not wake the waiters once listening, with no notification sent")
	}
}
