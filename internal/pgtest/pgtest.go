// Package pgtest starts throwaway PostgreSQL clusters for tests.
//
// Each cluster has its own data directory and its own TCP port on 127.0.0.1,
// and is stopped and deleted when the test ends. A cluster can be stopped
// abruptly (StopImmediate) and started again on the same data directory and
// port (Restart), so storage tests can exercise crash recovery and failover.
// The clusters are package pgcluster's; this package ties them to a test.
//
// The PostgreSQL server binaries (initdb, pg_ctl, postgres) must be
// installed; on Debian: apt-get install postgresql. A missing installation
// fails the test instead of skipping it, so a misconfigured CI machine
// cannot silently pass storage tests.
package pgtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/internal/pgcluster"
)

// Superuser is the database superuser of every cluster.
const Superuser = pgcluster.Superuser

// Cluster is a running (or deliberately stopped) throwaway PostgreSQL
// cluster. Its methods are safe for concurrent use.
type Cluster struct {
	c *pgcluster.Cluster
}

// Start creates a new cluster, starts it and registers a cleanup that stops
// it and deletes its files. It fails the test if PostgreSQL is not
// installed or the cluster cannot be started.
func Start(t testing.TB) *Cluster {
	t.Helper()
	// Not t.TempDir: its parent directories are 0700 and root-owned, which
	// the postgres user could not traverse when we run as root.
	base, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatalf("pgtest: create cluster dir: %v", err)
	}
	c, err := pgcluster.Open(base)
	if err != nil {
		os.RemoveAll(base)
		t.Fatalf("pgtest: %v", err)
	}
	// Registered before the start can fail, so a half-started cluster is
	// still stopped and removed.
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("pgtest: removing the cluster: %v", err)
		}
	})
	if err := c.Start(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return &Cluster{c: c}
}

// Host returns the address the cluster listens on.
func (c *Cluster) Host() string { return pgcluster.Host }

// Port returns the TCP port the cluster listens on. It stays the same
// across Stop and Restart.
func (c *Cluster) Port() int { return c.c.Port() }

// DataDir returns the cluster's data directory.
func (c *Cluster) DataDir() string { return c.c.DataDir() }

// DSN returns a connection URL for database db as the superuser.
func (c *Cluster) DSN(db string) string { return c.c.DSN(db) }

// Env returns libpq environment variables that point at database db, for
// child processes and for code configured through PGHOST and friends.
func (c *Cluster) Env(db string) map[string]string { return c.c.Env(db) }

// CreateDatabase creates an empty database called name and returns its DSN.
// Giving each test its own database keeps tests that share a cluster from
// seeing each other's state.
func (c *Cluster) CreateDatabase(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	created, err := c.c.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if !created {
		t.Fatalf("pgtest: database %q already exists; give each test its own name", name)
	}
	return c.c.DSN(name)
}

// Durable turns fsync back on (clusters start with it off for speed), so a
// benchmark's commits are as durable as production's: with
// synchronous_commit=on every commit flushes the WAL to disk.
func (c *Cluster) Durable(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{"ALTER SYSTEM SET fsync = on", "SELECT pg_reload_conf()"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("pgtest: %s: %v", q, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var fsync, sync string
		err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit')").Scan(&fsync, &sync)
		if err == nil && fsync == "on" && sync == "on" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtest: fsync=%s synchronous_commit=%s after reload (err %v); want both on", fsync, sync, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts the cluster down cleanly (pg_ctl stop -m fast): open sessions
// are terminated and a shutdown checkpoint is written.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if err := c.c.Stop(pgcluster.Fast); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// StopImmediate kills the cluster without a shutdown checkpoint
// (pg_ctl stop -m immediate), as if the server had crashed. The next
// Restart runs crash recovery.
func (c *Cluster) StopImmediate(t testing.TB) {
	t.Helper()
	if err := c.c.Stop(pgcluster.Immediate); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// Restart starts the cluster again on the same data directory and port and
// returns once it accepts connections (after any crash recovery). If the
// cluster is still running, it is first stopped with Stop's fast mode.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	if c.c.Running() {
		c.Stop(t)
	}
	if err := c.c.Start(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}
