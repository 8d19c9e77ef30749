package pgcluster

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func execSQL(t *testing.T, c *Cluster, db, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(db))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	require.NoError(t, err)
}

// A devnet that stops and runs again opens its cluster directory anew: the
// data and the port are the ones it left, and a server a killed process
// left running is adopted rather than started twice.
func TestReopenKeepsDataAndPort(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "pgcluster-")
	require.NoError(t, err)
	c, err := Open(dir)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Remove()) })
	require.NoError(t, c.Start())
	port := c.Port()
	require.NotZero(t, port)

	created, err := c.CreateDatabase(t.Context(), "kept")
	require.NoError(t, err)
	require.True(t, created)
	created, err = c.CreateDatabase(t.Context(), "kept")
	require.NoError(t, err)
	require.False(t, created, "a second create finds the database")
	execSQL(t, c, "kept", "CREATE TABLE t (v int); INSERT INTO t VALUES (7)")

	require.NoError(t, c.Stop(Immediate))
	require.Error(t, c.Stop(Fast), "stopping a stopped cluster says so")

	again, err := Open(dir)
	require.NoError(t, err)
	require.Equal(t, port, again.Port(), "the port is read back from the data directory")
	require.NoError(t, again.Start())
	execSQL(t, again, "kept", "INSERT INTO t SELECT v + 1 FROM t")

	// A third handle finds the server running and adopts it.
	third, err := Open(dir)
	require.NoError(t, err)
	require.NoError(t, third.Start())
	require.True(t, third.Running())
	require.NoError(t, third.Stop(Fast))
	require.False(t, again.serverAlive())
}
