// Package sqlite is the job queue's default driver: one SQLite file in the
// host's storage directory (FileName), opened the devshard way
// (internal/sqlitedb: WAL, synchronous=FULL unless told otherwise).
//
// Every write runs in a BEGIN IMMEDIATE transaction on the pool's single
// connection, so claims are serialised by the database's one writer: two
// workers never get the same job, also when several queues (processes)
// open the same file. Times are stored as Unix microseconds, 0 for none.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/devshard/devshard/internal/sqlitedb"
	"github.com/devshard/devshard/jobs"
)

// FileName is the queue's file in a host's storage directory.
const FileName = "jobs.db"

// Options configure the driver.
type Options struct {
	// Synchronous is SQLite's durability level, FULL (default) or NORMAL.
	// NORMAL may lose the last commits on power loss; a lost claim is then
	// claimed again, a lost result is run again.
	Synchronous string
}

// Driver is the SQLite driver. It is safe for concurrent use.
type Driver struct {
	db   *sql.DB
	path string
}

var _ jobs.Driver = (*Driver)(nil)

// schemaVersion is the user_version of a file with the current schema.
const schemaVersion = 1

const schema = `
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL,
    priority      INTEGER NOT NULL,
    input         BLOB    NOT NULL,
    state         TEXT    NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 0,
    worker        TEXT    NOT NULL DEFAULT '',
    lease_token   TEXT    NOT NULL DEFAULT '',
    lease_expires INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER NOT NULL DEFAULT 0,
    heartbeat_at  INTEGER NOT NULL DEFAULT 0,
    finished_at   INTEGER NOT NULL DEFAULT 0,
    result        BLOB,
    error_class   TEXT    NOT NULL DEFAULT '',
    error         TEXT    NOT NULL DEFAULT ''
);
-- The claim order, over ready jobs only.
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (priority, created_at, id) WHERE state = 'ready';
-- The rescuer's two scans.
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded', 'failed');
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
`

// Open opens (creating if needed) the queue file at path.
func Open(ctx context.Context, path string, opts Options) (*Driver, error) {
	d := &Driver{db: sqlitedb.Open(path, sqlitedb.Options{Synchronous: opts.Synchronous}), path: path}
	err := d.write(ctx, func(c *sql.Conn) error {
		var v int
		if err := c.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			return err
		}
		if v > schemaVersion {
			return fmt.Errorf("the file has schema version %d; this binary knows up to %d (downgrade?)", v, schemaVersion)
		}
		if _, err := c.ExecContext(ctx, schema); err != nil {
			return err
		}
		_, err := c.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion))
		return err
	})
	if err != nil {
		d.db.Close()
		return nil, fmt.Errorf("open job queue %s: %w", path, err)
	}
	return d, nil
}

// Close closes the file.
func (d *Driver) Close() error { return d.db.Close() }

// write runs fn in a BEGIN IMMEDIATE transaction: the write lock is taken
// at the start, so a transaction never fails upgrading a read to a write
// when another process holds the file.
func (d *Driver) write(ctx context.Context, fn func(*sql.Conn) error) (err error) {
	c, err := d.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return err
	}
	// Ending the transaction must not depend on ctx: a cancelled ctx would
	// leave it open on the pooled connection.
	end := context.WithoutCancel(ctx)
	if err := fn(c); err != nil {
		if _, rbErr := c.ExecContext(end, "ROLLBACK"); rbErr != nil {
			return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
		}
		return err
	}
	if _, err := c.ExecContext(end, "COMMIT"); err != nil {
		c.ExecContext(end, "ROLLBACK")
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// querier is a connection or the pool.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

const columns = `id, kind, input, state, attempt, worker, lease_token, lease_expires,
	created_at, started_at, heartbeat_at, finished_at, result, error_class, error`

// briefColumns leave out input and result (List without Detail).
const briefColumns = `id, kind, NULL, state, attempt, worker, lease_token, lease_expires,
	created_at, started_at, heartbeat_at, finished_at, NULL, error_class, error`

type scanner interface{ Scan(dest ...any) error }

func scanJob(s scanner, detail bool) (jobs.Job, error) {
	var j jobs.Job
	var kind, state string
	var expires, created, started, heartbeat, finished int64
	err := s.Scan(&j.ID, &kind, &j.Input, &state, &j.Attempt, &j.Worker, &j.LeaseToken, &expires,
		&created, &started, &heartbeat, &finished, &j.Result, &j.ErrorClass, &j.Error)
	j.Kind, j.State = jobs.Kind(kind), jobs.State(state)
	// The driver reads an empty blob as nil.
	if detail && j.Input == nil {
		j.Input = []byte{}
	}
	if detail && j.State == jobs.Succeeded && j.Result == nil {
		j.Result = []byte{}
	}
	j.LeaseExpires, j.Created, j.Started, j.Heartbeat, j.Finished = fromMicros(expires), fromMicros(created), fromMicros(started), fromMicros(heartbeat), fromMicros(finished)
	return j, err
}

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// get reads one job; nil if there is none.
func get(ctx context.Context, q querier, id string) (*jobs.Job, error) {
	j, err := scanJob(q.QueryRowContext(ctx, "SELECT "+columns+" FROM jobs WHERE id = ?", id), true)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &j, nil
}

// Insert implements jobs.Driver.
func (d *Driver) Insert(ctx context.Context, j jobs.Job) (stored jobs.Job, inserted bool, err error) {
	err = d.write(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, `INSERT INTO jobs (id, kind, priority, input, state, created_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			j.ID, string(j.Kind), jobs.Priority(j.Kind), j.Input, string(jobs.Ready), micros(j.Created))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		inserted = n == 1
		cur, err := get(ctx, c, j.ID)
		if err != nil {
			return err
		}
		stored = *cur
		return nil
	})
	if err != nil {
		return jobs.Job{}, false, d.fail(err, "enqueue %s job %s", j.Kind, jobs.ShortID(j.ID))
	}
	return stored, inserted, nil
}

// Claim implements jobs.Driver: one transaction, one commit, claiming
// for the holders one after another until no job is ready.
func (d *Driver) Claim(ctx context.Context, p jobs.ClaimParams) ([]jobs.Job, error) {
	kinds := ""
	var kindArgs []any
	if len(p.Kinds) > 0 {
		kinds = " AND kind IN (" + placeholders(len(p.Kinds)) + ")"
		for _, k := range p.Kinds {
			kindArgs = append(kindArgs, string(k))
		}
	}
	query := `UPDATE jobs SET state = 'running', attempt = attempt + 1,
			worker = ?, lease_token = ?, lease_expires = ?, started_at = ?, heartbeat_at = ?
		WHERE id = (SELECT id FROM jobs WHERE state = 'ready'` + kinds + `
			ORDER BY priority, created_at, id LIMIT 1)
		RETURNING ` + columns
	var claimed []jobs.Job
	err := d.write(ctx, func(c *sql.Conn) error {
		for _, h := range p.Holders {
			args := append([]any{h.Worker, h.Token, micros(p.Expires), micros(p.Now), micros(p.Now)}, kindArgs...)
			j, err := scanJob(c.QueryRowContext(ctx, query, args...), true)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			if err != nil {
				return err
			}
			claimed = append(claimed, j)
		}
		return nil
	})
	if err != nil {
		return nil, d.fail(err, "claim %s", p.Describe())
	}
	return claimed, nil
}

// Heartbeat implements jobs.Driver.
func (d *Driver) Heartbeat(ctx context.Context, l jobs.Lease, now, expires time.Time) (applied bool, current *jobs.Job, err error) {
	err = d.write(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, `UPDATE jobs SET heartbeat_at = ?, lease_expires = ?
			WHERE id = ? AND state = 'running' AND attempt = ? AND lease_token = ?`,
			micros(now), micros(expires), l.JobID, l.Attempt, l.Token)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if applied = n == 1; !applied {
			current, err = get(ctx, c, l.JobID)
		}
		return err
	})
	if err != nil {
		return false, nil, d.fail(err, "heartbeat of job %s attempt %d", jobs.ShortID(l.JobID), l.Attempt)
	}
	return applied, current, nil
}

// Finish implements jobs.Driver: one transaction, one commit, the
// finishes applied one after another, each refusal explained by the job
// as it stands at that point of the transaction.
func (d *Driver) Finish(ctx context.Context, fs []jobs.FinishParams) ([]jobs.Fenced, error) {
	out := make([]jobs.Fenced, len(fs))
	err := d.write(ctx, func(c *sql.Conn) error {
		for i, f := range fs {
			l, o := f.Lease, f.Outcome
			j, err := scanJob(c.QueryRowContext(ctx, `UPDATE jobs SET state = ?, result = ?, error_class = ?, error = ?,
					finished_at = ?, lease_expires = 0
				WHERE id = ? AND state = 'running' AND attempt = ? AND lease_token = ?
				RETURNING `+columns,
				string(o.State), o.Result, o.ErrorClass, o.Error, micros(o.Now), l.JobID, l.Attempt, l.Token), true)
			switch {
			case err == nil:
				out[i] = jobs.Fenced{Applied: true, Current: &j}
			case errors.Is(err, sql.ErrNoRows):
				if out[i].Current, err = get(ctx, c, l.JobID); err != nil {
					return err
				}
			default:
				return err
			}
		}
		return nil
	})
	if err != nil {
		if len(fs) == 1 {
			return nil, d.fail(err, "finish job %s attempt %d", jobs.ShortID(fs[0].Lease.JobID), fs[0].Lease.Attempt)
		}
		return nil, d.fail(err, "finish %d jobs", len(fs))
	}
	return out, nil
}

// Rescue implements jobs.Driver. The pass is one write transaction, and
// SQLite has one writer, so passes of queues sharing the file never
// overlap and none is skipped.
func (d *Driver) Rescue(ctx context.Context, p jobs.RescueParams) (jobs.RescueReport, error) {
	var r jobs.RescueReport
	err := d.write(ctx, func(c *sql.Conn) error {
		r = jobs.RescueReport{}
		type expired struct {
			ref     jobs.JobRef
			attempt int
		}
		var exp []expired
		rows, err := c.QueryContext(ctx, `SELECT id, kind, attempt FROM jobs
			WHERE state = 'running' AND lease_expires <= ? ORDER BY lease_expires, id`, micros(p.Now))
		if err != nil {
			return err
		}
		for rows.Next() {
			var e expired
			var kind string
			if err := rows.Scan(&e.ref.ID, &kind, &e.attempt); err != nil {
				rows.Close()
				return err
			}
			e.ref.Kind = jobs.Kind(kind)
			exp = append(exp, e)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for _, e := range exp {
			if p.Retry(e.attempt) {
				_, err = c.ExecContext(ctx, `UPDATE jobs SET state = 'ready', worker = '', lease_token = '', lease_expires = 0
					WHERE id = ?`, e.ref.ID)
				r.Retried = append(r.Retried, e.ref)
			} else {
				_, err = c.ExecContext(ctx, `UPDATE jobs SET state = 'failed', lease_expires = 0, finished_at = ?,
						error_class = ?, error = ? WHERE id = ?`,
					micros(p.Now), jobs.ErrorClassLeaseExpired, jobs.LeaseExpiredMessage(e.attempt), e.ref.ID)
				r.Failed = append(r.Failed, e.ref)
			}
			if err != nil {
				return err
			}
		}
		res, err := c.ExecContext(ctx, `DELETE FROM jobs WHERE state IN ('succeeded', 'failed') AND finished_at <= ?`,
			micros(p.FinishedBefore))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		r.Expired = int(n)
		return err
	})
	if err != nil {
		return jobs.RescueReport{}, d.fail(err, "rescue pass")
	}
	return r, nil
}

// Get implements jobs.Driver.
func (d *Driver) Get(ctx context.Context, id string) (jobs.Job, error) {
	j, err := get(ctx, d.db, id)
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
	states := f.States()
	args := make([]any, len(states))
	for i, s := range states {
		args[i] = string(s)
	}
	rows, err := d.db.QueryContext(ctx, "SELECT "+cols+" FROM jobs WHERE state IN ("+placeholders(len(states))+") ORDER BY created_at, id", args...)
	if err != nil {
		return nil, d.fail(err, "list jobs")
	}
	defer rows.Close()
	out := []jobs.Job{}
	for rows.Next() {
		j, err := scanJob(rows, f.Detail)
		if err != nil {
			return nil, d.fail(err, "list jobs")
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, d.fail(err, "list jobs")
	}
	return out, nil
}

// states reads the states of the jobs of ids that exist.
func states(ctx context.Context, c *sql.Conn, ids []string) (map[string]jobs.State, error) {
	rows, err := c.QueryContext(ctx, "SELECT id, state FROM jobs WHERE id IN ("+placeholders(len(ids))+")", anys(ids)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := map[string]jobs.State{}
	for rows.Next() {
		var id, state string
		if err := rows.Scan(&id, &state); err != nil {
			return nil, err
		}
		found[id] = jobs.State(state)
	}
	return found, rows.Err()
}

// Reset implements jobs.Driver.
func (d *Driver) Reset(ctx context.Context, ids []string) error {
	var refused error
	err := d.write(ctx, func(c *sql.Conn) error {
		found, err := states(ctx, c, ids)
		if err != nil {
			return err
		}
		if refused = jobs.CheckReset(ids, found); refused != nil {
			return refused
		}
		_, err = c.ExecContext(ctx, `UPDATE jobs SET state = 'ready', attempt = 0, worker = '', lease_token = '',
				lease_expires = 0, started_at = 0, heartbeat_at = 0, finished_at = 0, result = NULL,
				error_class = '', error = ''
			WHERE id IN (`+placeholders(len(ids))+`)`, anys(ids)...)
		return err
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
	err := d.write(ctx, func(c *sql.Conn) error {
		found, err := states(ctx, c, ids)
		if err != nil {
			return err
		}
		if refused = jobs.CheckFound(ids, found); refused != nil {
			return refused
		}
		_, err = c.ExecContext(ctx, "DELETE FROM jobs WHERE id IN ("+placeholders(len(ids))+")", anys(ids)...)
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
	var n int64
	err := d.write(ctx, func(c *sql.Conn) error {
		res, err := c.ExecContext(ctx, "DELETE FROM jobs")
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, d.fail(err, "remove all jobs")
	}
	return int(n), nil
}

// Count implements jobs.Driver.
func (d *Driver) Count(ctx context.Context) (map[jobs.State]int, error) {
	rows, err := d.db.QueryContext(ctx, "SELECT state, count(*) FROM jobs GROUP BY state")
	if err != nil {
		return nil, d.fail(err, "count jobs")
	}
	defer rows.Close()
	n := map[jobs.State]int{}
	for rows.Next() {
		var state string
		var c int
		if err := rows.Scan(&state, &c); err != nil {
			return nil, d.fail(err, "count jobs")
		}
		n[jobs.State(state)] = c
	}
	if err := rows.Err(); err != nil {
		return nil, d.fail(err, "count jobs")
	}
	return n, nil
}

func (d *Driver) fail(err error, format string, args ...any) error {
	return fmt.Errorf("%s in %s: %w", fmt.Sprintf(format, args...), d.path, err)
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func anys(ids []string) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}
