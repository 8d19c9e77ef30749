package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/jobstest"
	"github.com/devshard/devshard/jobs/sqlite"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	jobstest.Run(t, target)
}

// target is a fresh queue file; queues opened on it share the file.
func target(t testing.TB) *jobstest.Target {
	path := filepath.Join(t.TempDir(), sqlite.FileName)
	return &jobstest.Target{
		Open: func(t testing.TB, opts jobs.Options) *jobs.Queue { return open(t, path, opts) },
		Driver: func(t testing.TB) jobs.Driver {
			d, err := sqlite.Open(context.Background(), path, sqlite.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { d.Close() })
			return d
		},
	}
}

func open(t testing.TB, path string, opts jobs.Options) *jobs.Queue {
	t.Helper()
	d, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	require.NoError(t, err)
	q, err := jobs.New(d, opts)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// Jobs survive a restart: the queue is its file.
func TestReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), sqlite.FileName)
	ctx := t.Context()
	q := open(t, path, jobs.Options{})
	j, _, err := q.Enqueue(ctx, jobs.KindInference, []byte("p"))
	require.NoError(t, err)
	c, err := q.Claim(ctx, "w")
	require.NoError(t, err)
	require.NoError(t, q.Close())

	q = open(t, path, jobs.Options{})
	got, err := q.Get(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, jobs.Running, got.State)
	require.NoError(t, q.Finish(ctx, c.Lease, []byte("r")), "a lease outlives a restart of the host")
}

// A file written by a newer binary is refused, not misread.
func TestNewerSchemaRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), sqlite.FileName)
	d, err := sqlite.Open(t.Context(), path, sqlite.Options{})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	db := sqlitedbOpen(t, path)
	_, err = db.Exec("PRAGMA user_version = 99")
	require.NoError(t, err)
	require.NoError(t, db.Close())
	_, err = sqlite.Open(t.Context(), path, sqlite.Options{})
	require.ErrorContains(t, err, "schema version 99")
}

// BenchmarkClaim: go test ./jobs/sqlite -run '^$' -bench Claim
func BenchmarkClaim(b *testing.B) {
	jobstest.BenchClaim(b, target)
}
