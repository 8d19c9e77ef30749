package pgtest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestStartSelectOne(t *testing.T) {
	t.Parallel()
	c := Start(t)

	var one int
	require.NoError(t, connect(t, c.DSN("postgres")).QueryRow(t.Context(), "SELECT 1").Scan(&one))
	require.Equal(t, 1, one)
}

func TestDatabasesAreSeparate(t *testing.T) {
	t.Parallel()
	c := Start(t)
	ctx := t.Context()

	a := connect(t, c.CreateDatabase(t, "db_a"))
	b := connect(t, c.CreateDatabase(t, "db-B")) // needs quoting

	_, err := a.Exec(ctx, "CREATE TABLE only_in_a (v int)")
	require.NoError(t, err)

	var dbName string
	require.NoError(t, b.QueryRow(ctx, "SELECT current_database()").Scan(&dbName))
	require.Equal(t, "db-B", dbName)

	_, err = b.Exec(ctx, "SELECT * FROM only_in_a")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "42P01", pgErr.Code) // undefined_table
}

func TestStopImmediateKeepsCommittedData(t *testing.T) {
	t.Parallel()
	c := Start(t)
	dsn := c.CreateDatabase(t, "crash")
	port := c.Port()

	conn := connect(t, dsn)
	_, err := conn.Exec(t.Context(), "CREATE TABLE kv (k text PRIMARY KEY, v text)")
	require.NoError(t, err)
	_, err = conn.Exec(t.Context(), "INSERT INTO kv VALUES ('before', 'crash')")
	require.NoError(t, err)

	c.StopImmediate(t)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = pgx.Connect(ctx, dsn)
	require.Error(t, err, "connecting to a stopped cluster must fail")
	// The old session is dead too.
	require.Error(t, conn.Ping(ctx))

	c.Restart(t)
	require.Equal(t, port, c.Port(), "restart must reuse the port")

	conn = connect(t, dsn)
	var v string
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT v FROM kv WHERE k = 'before'").Scan(&v))
	require.Equal(t, "crash", v)
	_, err = conn.Exec(t.Context(), "INSERT INTO kv VALUES ('after', 'restart')")
	require.NoError(t, err)
}

func TestStopAndRestart(t *testing.T) {
	t.Parallel()
	c := Start(t)
	dsn := c.CreateDatabase(t, "fast")

	_, err := connect(t, dsn).Exec(t.Context(), "CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
	require.NoError(t, err)

	c.Stop(t)
	c.Restart(t)
	c.Restart(t) // restarting a running cluster stops it first

	var v int
	require.NoError(t, connect(t, dsn).QueryRow(t.Context(), "SELECT v FROM t").Scan(&v))
	require.Equal(t, 42, v)

	// Leave it stopped: cleanup must cope with an already stopped cluster.
	c.Stop(t)
}

func TestEnvMatchesDSN(t *testing.T) {
	t.Parallel()
	c := Start(t)
	env := c.Env("postgres")

	require.Equal(t, map[string]string{
		"PGHOST":     c.Host(),
		"PGPORT":     strconv.Itoa(c.Port()),
		"PGUSER":     Superuser,
		"PGDATABASE": "postgres",
		"PGSSLMODE":  "disable",
	}, env)

	// Connect using only the keyword equivalents of the variables.
	connStr := "host=" + env["PGHOST"] + " port=" + env["PGPORT"] + " user=" + env["PGUSER"] +
		" dbname=" + env["PGDATABASE"] + " sslmode=" + env["PGSSLMODE"]
	var user string
	require.NoError(t, connect(t, connStr).QueryRow(t.Context(), "SELECT current_user").Scan(&user))
	require.Equal(t, Superuser, user)
}
