// Package postgres is the job queue's driver for operators who run
// Postgres, and for several hosts sharing one queue.
//
// The queue lives in its own schema (Config.Schema, default
// "devshard_jobs"), set as the search_path of every connection, with its
// own goose version table; the embedded migrations (migrations/) run under
// a Postgres advisory lock, so hosts starting together migrate once.
//
// A batch of claims is one statement that locks as many ready jobs as it
// has claimers, FOR UPDATE SKIP LOCKED, and hands them out in claim order,
// so concurrent claimers never wait on each other and never share a job.
// A batch of finishes is one UPDATE, fenced row by row. A rescue pass
// takes a transaction-level advisory lock first: of several hosts sharing
// the queue, one rescues at a time and the others skip the pass. Jobs
// made ready are announced with NOTIFY on the schema's channel, and each
// queue LISTENs there, so a worker waiting on one host is woken by a job
// enqueued on another.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/devshard/devshard/jobs"
)

// DefaultSchema holds the queue unless Config.Schema says otherwise.
const DefaultSchema = "devshard_jobs"

// Config configures the driver. The zero value reads the PG* environment
// and uses DefaultSchema.
type Config struct {
	// DSN is a libpq connection string or URL; empty means the standard PG*
	// environment variables.
	DSN string
	// Schema holds the queue's tables: lower-case letters, digits and
	// underscores, at most 48 characters. Hosts that share a queue use the
	// same schema.
	Schema string
	// MaxConns is the pool size (default 8). One more connection listens
	// for notifications.
	MaxConns int32
}

// Driver is the Postgres driver. It is safe for concurrent use.
type Driver struct {
	pool    *pgxpool.Pool
	name    string // user@host:port/db schema, for messages
	schema  string
	channel string // NOTIFY channel of the schema
	rescuer int64  // advisory lock key of the schema's rescue pass
}

var _ jobs.Driver = (*Driver)(nil)
var _ jobs.Listener = (*Driver)(nil)
var _ jobs.Writers = (*Driver)(nil)

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,47}$`)

// Open connects, creates the schema if needed, applies the migrations and
// returns the driver.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Schema == "" {
		cfg.Schema = DefaultSchema
	}
	if !schemaName.MatchString(cfg.Schema) {
		return nil, fmt.Errorf("job queue schema %q: use lower-case letters, digits and underscores, at most 48 characters", cfg.Schema)
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 8
	}
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("job queue: bad connection settings (DSN or PG* variables): %w", err)
	}
	pc.MaxConns = cfg.MaxConns
	pc.ConnConfig.RuntimeParams["application_name"] = "devshard-jobs"
	pc.ConnConfig.RuntimeParams["search_path"] = cfg.Schema
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("job queue: %w", err)
	}
	c := pc.ConnConfig
	d := &Driver{
		pool:    pool,
		name:    fmt.Sprintf("%s@%s:%d/%s schema %s", c.User, c.Host, c.Port, c.Database, cfg.Schema),
		schema:  cfg.Schema,
		channel: cfg.Schema + "_ready",
		rescuer: lockKey("rescue", cfg.Schema),
	}
	if err := d.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return d, nil
}

// lockKey is the advisory lock key of one purpose in one schema.
func lockKey(purpose, schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("devshard jobs " + purpose + " " + schema))
	return int64(h.Sum64())
}

//go:embed migrations/*.sql
var migrations embed.FS

// migrate creates the schema and applies the embedded migrations under an
// advisory lock of the schema's own, so it never waits on the host
// store's migrations.
func (d *Driver) migrate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// CREATE SCHEMA IF NOT EXISTS is not safe against a concurrent
	// creator, so it runs under the migration lock too.
	key := lockKey("migrate", d.schema)
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", key); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{d.schema}.Sanitize())
		return err
	})
	if err != nil {
		return d.fail(err, "create the job queue schema")
	}
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(key), lock.WithLockTimeout(1, 120))
	if err != nil {
		return err
	}
	db := stdlib.OpenDBFromPool(d.pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("job queue: load migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return d.fail(err, "migrate the job queue")
	}
	return nil
}

// Writers implements jobs.Writers: one batch per pooled connection. Calls
// go out at once while a connection is free, since the server flushes
// concurrent commits together; they are batched once all are busy.
func (d *Driver) Writers() int { return int(d.pool.Config().MaxConns) }

// Close closes the pool.
func (d *Driver) Close() error {
	d.pool.Close()
	return nil
}

func (d *Driver) fail(err error, format string, args ...any) error {
	return fmt.Errorf("%s on Postgres %s: %w", fmt.Sprintf(format, args...), d.name, err)
}

// notify announces a job made ready, delivered when tx commits.
func (d *Driver) notify(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", d.channel)
	return err
}

// Listen implements jobs.Listener: it listens on the schema's channel on a
// connection of its own, reconnecting after a second when it is lost.
func (d *Driver) Listen(ctx context.Context, wake func()) {
	for ctx.Err() == nil {
		// listen returns only when its connection fails (or ctx ends).
		// Jobs made ready while no connection listened are found by the
		// waiters' periodic re-check; wake them now all the same.
		d.listen(ctx, wake)
		if ctx.Err() != nil {
			return
		}
		wake()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (d *Driver) listen(ctx context.Context, wake func()) error {
	conn, err := pgx.ConnectConfig(ctx, d.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{d.channel}.Sanitize()); err != nil {
		return err
	}
	// A job committed before LISTEN took effect sent its notification to
	// nobody, and a waiter whose claim ran before that commit would sleep
	// until its next periodic look: wake the waiters once now that every
	// later commit notifies.
	wake()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		wake()
	}
}

// columns are the job's columns, qualified by the alias j.
const columns = `j.id, j.kind, j.input, j.state, j.attempt, j.worker, j.lease_token, j.lease_expires,
	j.created_at, j.started_at, j.heartbeat_at, j.finished_at, j.result, j.error_class, j.error`

// briefColumns leave out input and result (List without Detail).
const briefColumns = `j.id, j.kind, NULL::bytea, j.state, j.attempt, j.worker, j.lease_token, j.lease_expires,
	j.created_at, j.started_at, j.heartbeat_at, j.finished_at, NULL::bytea, j.error_class, j.error`

// scanJob reads a job's columns, after the lead columns given.
func scanJob(row pgx.Row, lead ...any) (jobs.Job, error) {
	var j jobs.Job
	var kind, state string
	var expires, started, heartbeat, finished *time.Time
	err := row.Scan(append(lead, &j.ID, &kind, &j.Input, &state, &j.Attempt, &j.Worker, &j.LeaseToken, &expires,
		&j.Created, &started, &heartbeat, &finished, &j.Result, &j.ErrorClass, &j.Error)...)
	j.Kind, j.State = jobs.Kind(kind), jobs.State(state)
	j.Created = j.Created.UTC()
	j.LeaseExpires, j.Started, j.Heartbeat, j.Finished = orZero(expires), orZero(started), orZero(heartbeat), orZero(finished)
	return j, err
}

func orZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// get reads one job; nil if there is none.
func get(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id string) (*jobs.Job, error) {
	j, err := scanJob(q.QueryRow(ctx, "SELECT "+columns+" FROM jobs j WHERE j.id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &j, nil
}

// Insert implements jobs.Driver.
func (d *Driver) Insert(ctx context.Context, j jobs.Job) (stored jobs.Job, inserted bool, err error) {
	err = pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO jobs (id, kind, priority, input, state, created_at)
			VALUES ($1, $2, $3, $4, 'ready', $5) ON CONFLICT (id) DO NOTHING`,
			j.ID, string(j.Kind), jobs.Priority(j.Kind), j.Input, j.Created)
		if err != nil {
			return err
		}
		if inserted = tag.RowsAffected() == 1; inserted {
			if err := d.notify(ctx, tx); err != nil {
				return err
			}
		}
		cur, err := get(ctx, tx, j.ID)
		if err != nil {
			return err
		}
		if cur == nil {
			return fmt.Errorf("job %s was removed while it was enqueued again; enqueue it once more", jobs.ShortID(j.ID))
		}
		stored = *cur
		return nil
	})
	if err != nil {
		return jobs.Job{}, false, d.fail(err, "enqueue %s job %s", j.Kind, jobs.ShortID(j.ID))
	}
	return stored, inserted, nil
}

// Claim implements jobs.Driver in one statement: it locks as many ready
// jobs as there are holders, SKIP LOCKED, numbers them in claim order and
// gives the n-th to the n-th holder.
func (d *Driver) Claim(ctx context.Context, p jobs.ClaimParams) ([]jobs.Job, error) {
	kinds := make([]string, len(p.Kinds))
	for i, k := range p.Kinds {
		kinds[i] = string(k)
	}
	workers := make([]string, len(p.Holders))
	tokens := make([]string, len(p.Holders))
	for i, h := range p.Holders {
		workers[i], tokens[i] = h.Worker, h.Token
	}
	// FOR UPDATE does not go with a window function, so the locked jobs
	// are numbered in a second step.
	rows, err := d.pool.Query(ctx, `WITH locked AS (
			SELECT id, priority, created_at FROM jobs
			WHERE state = 'ready' AND (cardinality($5::text[]) = 0 OR kind = ANY($5::text[]))
			ORDER BY priority, created_at, id
			LIMIT cardinality($1::text[]) FOR UPDATE SKIP LOCKED),
		next AS (
			SELECT id, row_number() OVER (ORDER BY priority, created_at, id) AS n FROM locked),
		holder AS (
			SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS h(worker, token, n))
		UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, worker = holder.worker,
			lease_token = holder.token, lease_expires = $3, started_at = $4, heartbeat_at = $4
		FROM next JOIN holder USING (n) WHERE j.id = next.id
		RETURNING holder.n, `+columns, workers, tokens, p.Expires, p.Now, kinds)
	if err != nil {
		return nil, d.fail(err, "claim %s", p.Describe())
	}
	claimed, err := collectNumbered(rows, len(p.Holders))
	if err != nil {
		return nil, d.fail(err, "claim %s", p.Describe())
	}
	// The jobs are numbered 1 to len(claimed), one per holder from the
	// first.
	out := make([]jobs.Job, len(claimed))
	for i, j := range claimed {
		if j == nil {
			return nil, d.fail(errors.New("the claimed jobs are not numbered from 1 without gaps"), "claim %s", p.Describe())
		}
		out[i] = *j
	}
	return out, nil
}

// collectNumbered reads rows of an ordinal (from 1) and a job's columns
// into a slice of n by ordinal, nil where no row came; it trims the nils
// at the end.
func collectNumbered(rows pgx.Rows, n int) ([]*jobs.Job, error) {
	out := make([]*jobs.Job, n)
	last := 0
	for rows.Next() {
		var i int
		j, err := scanJob(rows, &i)
		if err != nil {
			rows.Close()
			return nil, err
		}
		if i < 1 || i > n {
			rows.Close()
			return nil, fmt.Errorf("row numbered %d of %d", i, n)
		}
		out[i-1] = &j
		last = max(last, i)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out[:last], nil
}

// Heartbeat implements jobs.Driver in one statement; only a refused
// heartbeat reads the job, to explain the refusal.
func (d *Driver) Heartbeat(ctx context.Context, l jobs.Lease, now, expires time.Time) (applied bool, current *jobs.Job, err error) {
	tag, err := d.pool.Exec(ctx, `UPDATE jobs SET heartbeat_at = $1, lease_expires = $2
		WHERE id = $3 AND state = 'running' AND attempt = $4 AND lease_token = $5`,
		now, expires, l.JobID, l.Attempt, l.Token)
	if err == nil {
		if applied = tag.RowsAffected() == 1; !applied {
			current, err = get(ctx, d.pool, l.JobID)
		}
	}
	if err != nil {
		return false, nil, d.fail(err, "heartbeat of job %s attempt %d", jobs.ShortID(l.JobID), l.Attempt)
	}
	return applied, current, nil
}

// Finish implements jobs.Driver in one statement, an UPDATE over the
// finishes unnested with their ordinals and fenced row by row. Only when
// some were refused does a second statement read those jobs, to explain
// the refusals. Two finishes with one lease update the row once.
func (d *Driver) Finish(ctx context.Context, fs []jobs.FinishParams) ([]jobs.Fenced, error) {
	n := len(fs)
	ids, tokens, states, classes, msgs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	attempts, results, nows := make([]int, n), make([][]byte, n), make([]time.Time, n)
	for i, f := range fs {
		ids[i], attempts[i], tokens[i] = f.Lease.JobID, f.Lease.Attempt, f.Lease.Token
		o := f.Outcome
		states[i], results[i], classes[i], msgs[i], nows[i] = string(o.State), o.Result, o.ErrorClass, o.Error, o.Now
	}
	rows, err := d.pool.Query(ctx, `UPDATE jobs j SET state = f.state, result = f.result, error_class = f.error_class,
			error = f.error, finished_at = f.now, lease_expires = NULL
		FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[], $8::timestamptz[])
			WITH ORDINALITY AS f(id, attempt, token, state, result, error_class, error, now, n)
		WHERE j.id = f.id AND j.state = 'running' AND j.attempt = f.attempt AND j.lease_token = f.token
		RETURNING f.n, `+columns, ids, attempts, tokens, states, results, classes, msgs, nows)
	if err != nil {
		return nil, d.fail(err, "finish %s", finishing(fs))
	}
	applied, err := collectNumbered(rows, n)
	if err != nil {
		return nil, d.fail(err, "finish %s", finishing(fs))
	}
	out := make([]jobs.Fenced, n)
	var refused []string
	for i := range fs {
		if i < len(applied) && applied[i] != nil {
			out[i] = jobs.Fenced{Applied: true, Current: applied[i]}
		} else {
			refused = append(refused, ids[i])
		}
	}
	if len(refused) == 0 {
		return out, nil
	}
	current, err := d.read(ctx, refused)
	if err != nil {
		return nil, d.fail(err, "read the jobs whose finish was refused")
	}
	for i := range fs {
		if !out[i].Applied {
			out[i].Current = current[ids[i]]
		}
	}
	return out, nil
}

// finishing names a batch of finishes for messages.
func finishing(fs []jobs.FinishParams) string {
	if len(fs) == 1 {
		return fmt.Sprintf("job %s attempt %d", jobs.ShortID(fs[0].Lease.JobID), fs[0].Lease.Attempt)
	}
	return fmt.Sprintf("%d jobs", len(fs))
}

// read reads the jobs of ids that exist, by id; each is a job of its own.
func (d *Driver) read(ctx context.Context, ids []string) (map[string]*jobs.Job, error) {
	rows, err := d.pool.Query(ctx, "SELECT "+columns+" FROM jobs j WHERE j.id = ANY($1)", ids)
	if err != nil {
		return nil, err
	}
	js, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (jobs.Job, error) { return scanJob(row) })
	if err != nil {
		return nil, err
	}
	out := make(map[string]*jobs.Job, len(js))
	for _, j := range js {
		out[j.ID] = &j
	}
	return out, nil
}

// Rescue implements jobs.Driver. The pass holds a transaction-level
// advisory lock; a pass that cannot take it at once is Skipped, since
// another queue's pass is doing the same work.
func (d *Driver) Rescue(ctx context.Context, p jobs.RescueParams) (jobs.RescueReport, error) {
	var r jobs.RescueReport
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		r = jobs.RescueReport{}
		if err := tx.QueryRow(ctx, "SELECT NOT pg_try_advisory_xact_lock($1)", d.rescuer).Scan(&r.Skipped); err != nil || r.Skipped {
			return err
		}
		// SKIP LOCKED: a job whose worker is finishing it right now is
		// left to that worker.
		rows, err := tx.Query(ctx, `SELECT id, kind, attempt FROM jobs
			WHERE state = 'running' AND lease_expires <= $1
			ORDER BY lease_expires, id FOR UPDATE SKIP LOCKED`, p.Now)
		if err != nil {
			return err
		}
		type expired struct {
			ref     jobs.JobRef
			attempt int
		}
		exp, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (expired, error) {
			var e expired
			var kind string
			err := row.Scan(&e.ref.ID, &kind, &e.attempt)
			e.ref.Kind = jobs.Kind(kind)
			return e, err
		})
		if err != nil {
			return err
		}
		b := &pgx.Batch{}
		for _, e := range exp {
			if p.Retry(e.attempt) {
				b.Queue(`UPDATE jobs SET state = 'ready', worker = '', lease_token = '', lease_expires = NULL WHERE id = $1`, e.ref.ID)
				r.Retried = append(r.Retried, e.ref)
			} else {
				b.Queue(`UPDATE jobs SET state = 'failed', lease_expires = NULL, finished_at = $1, error_class = $2, error = $3
					WHERE id = $4`, p.Now, jobs.ErrorClassLeaseExpired, jobs.LeaseExpiredMessage(e.attempt), e.ref.ID)
				r.Failed = append(r.Failed, e.ref)
			}
		}
		if len(r.Retried) > 0 {
			b.Queue("SELECT pg_notify($1, '')", d.channel)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM jobs WHERE state IN ('succeeded', 'failed') AND finished_at <= $1`, p.FinishedBefore)
		r.Expired = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return jobs.RescueReport{}, d.fail(err, "rescue pass")
	}
	return r, nil
}

// Get implements jobs.Driver.
func (d *Driver) Get(ctx context.Context, id string) (jobs.Job, error) {
	j, err := get(ctx, d.pool, id)
	if err != nil {
		return jobs.Job{}, d.fail(err, "get job %s", jobs.ShortID(id))
	}
	if j == nil {
		return jobs.Job{}, &jobs.NotFoundError{IDs: []string{id}}
	}
	return *j, nil
}

// List implements jobs.Driver.
func (d *Driver) List(ctx context.Context, f jobs.Filter) ([]jobs.Job, error) {
	cols := briefColumns
	if f.Detail {
		cols = columns
	}
	var states []string
	for _, s := range f.States() {
		states = append(states, string(s))
	}
	rows, err := d.pool.Query(ctx, "SELECT "+cols+" FROM jobs j WHERE j.state = ANY($1) ORDER BY j.created_at, j.id", states)
	if err != nil {
		return nil, d.fail(err, "list jobs")
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (jobs.Job, error) { return scanJob(row) })
	if err != nil {
		return nil, d.fail(err, "list jobs")
	}
	if out == nil {
		out = []jobs.Job{}
	}
	return out, nil
}

// states locks and reads the states of the jobs of ids that exist.
func states(ctx context.Context, tx pgx.Tx, ids []string) (map[string]jobs.State, error) {
	rows, err := tx.Query(ctx, "SELECT id, state FROM jobs WHERE id = ANY($1) FOR UPDATE", ids)
	if err != nil {
		return nil, err
	}
	found := map[string]jobs.State{}
	var id, state string
	_, err = pgx.ForEachRow(rows, []any{&id, &state}, func() error {
		found[id] = jobs.State(state)
		return nil
	})
	return found, err
}

// Reset implements jobs.Driver.
func (d *Driver) Reset(ctx context.Context, ids []string) error {
	var refused error
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		found, err := states(ctx, tx, ids)
		if err != nil {
			return err
		}
		if refused = jobs.CheckReset(ids, found); refused != nil {
			return refused
		}
		if _, err := tx.Exec(ctx, `UPDATE jobs SET state = 'ready', attempt = 0, worker = '', lease_token = '',
				lease_expires = NULL, started_at = NULL, heartbeat_at = NULL, finished_at = NULL, result = NULL,
				error_class = '', error = ''
			WHERE id = ANY($1)`, ids); err != nil {
			return err
		}
		return d.notify(ctx, tx)
	})
	if refused != nil {
		return refused
	}
	if err != nil {
		return d.fail(err, "reset %d jobs", len(ids))
	}
	return nil
}

// Remove implements jobs.Driver.
func (d *Driver) Remove(ctx context.Context, ids []string) error {
	var refused error
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		found, err := states(ctx, tx, ids)
		if err != nil {
			return err
		}
		if refused = jobs.CheckFound(ids, found); refused != nil {
			return refused
		}
		_, err = tx.Exec(ctx, "DELETE FROM jobs WHERE id = ANY($1)", ids)
		return err
	})
	if refused != nil {
		return refused
	}
	if err != nil {
		return d.fail(err, "remove %d jobs", len(ids))
	}
	return nil
}

// RemoveAll implements jobs.Driver.
func (d *Driver) RemoveAll(ctx context.Context) (int, error) {
	tag, err := d.pool.Exec(ctx, "DELETE FROM jobs")
	if err != nil {
		return 0, d.fail(err, "remove all jobs")
	}
	return int(tag.RowsAffected()), nil
}

// Count implements jobs.Driver.
func (d *Driver) Count(ctx context.Context) (map[jobs.State]int, error) {
	rows, err := d.pool.Query(ctx, "SELECT state, count(*) FROM jobs GROUP BY state")
	if err != nil {
		return nil, d.fail(err, "count jobs")
	}
	n := map[jobs.State]int{}
	var state string
	var c int
	if _, err := pgx.ForEachRow(rows, []any{&state, &c}, func() error {
		n[jobs.State(state)] = c
		return nil
	}); err != nil {
		return nil, d.fail(err, "count jobs")
	}
	return n, nil
}
