// Package pgtest starts throwaway PostgreSQL clusters for tests.
//
// Each cluster has its own data directory and its own TCP port on 127.0.0.1,
// and is stopped and deleted when the test ends. A cluster can be stopped
// abruptly (StopImmediate) and started again on the same data directory and
// port (Restart), so storage tests can exercise crash recovery and failover.
//
// The PostgreSQL server binaries (initdb, pg_ctl, postgres) must be
// installed; on Debian: apt-get install postgresql. They are looked up on
// PATH first, then under /usr/lib/postgresql/<version>/bin (highest version
// wins). A missing installation fails the test instead of skipping it, so a
// misconfigured CI machine cannot silently pass storage tests.
//
// initdb and postgres refuse to run as root. When the test process runs as
// root (as in CI), the server runs as the unprivileged "postgres" OS user.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the database superuser of every cluster. initdb is run with
// -U Superuser so the name does not depend on which OS user ran it.
const Superuser = "postgres"

// host is the only address clusters listen on, so tests never expose a
// trust-authenticated server to the network.
const host = "127.0.0.1"

// Cluster is a running (or deliberately stopped) throwaway PostgreSQL
// cluster. Its methods are safe for concurrent use.
type Cluster struct {
	bins    binaries
	cred    *syscall.Credential // nil: run the server as the current user
	baseDir string              // owned by the server user; holds data, socket, log
	dataDir string
	logFile string
	port    int

	// mu serialises start/stop so concurrent Stop and Restart calls from a
	// failover test cannot interleave pg_ctl invocations.
	mu      sync.Mutex
	running bool
}

// Start creates a new cluster, starts it and registers a cleanup that stops
// it and deletes its files. It fails the test if PostgreSQL is not
// installed or the cluster cannot be started.
func Start(t testing.TB) *Cluster {
	t.Helper()

	bins, err := findBinariesOnce()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cred, err := serverCredentialOnce()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}

	// Not t.TempDir: its parent directories are 0700 and root-owned, which
	// the postgres user could not traverse when we run as root.
	base, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatalf("pgtest: create cluster dir: %v", err)
	}
	c := &Cluster{
		bins:    bins,
		cred:    cred,
		baseDir: base,
		dataDir: filepath.Join(base, "data"),
		logFile: filepath.Join(base, "server.log"),
	}
	// Registered before anything can fail, so a half-started cluster is
	// still stopped and removed.
	t.Cleanup(func() { c.cleanup(t) })

	if cred != nil {
		if err := os.Chown(base, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatalf("pgtest: chown %s to the postgres user: %v", base, err)
		}
		if err := checkSearchable(filepath.Dir(base), cred); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}

	// --no-sync: durability of the initial catalog does not matter for a
	// throwaway cluster, and skipping fsync makes initdb much faster.
	if err := c.run(c.bins.initdb,
		"-D", c.dataDir, "-U", Superuser, "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}

	if err := c.startOnFreePort(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return c
}

// Host returns the address the cluster listens on.
func (c *Cluster) Host() string { return host }

// Port returns the TCP port the cluster listens on. It stays the same
// across Stop and Restart.
func (c *Cluster) Port() int { return c.port }

// DataDir returns the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// DSN returns a connection URL for database db as the superuser.
func (c *Cluster) DSN(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort(host, strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Env returns libpq environment variables that point at database db, for
// child processes and for code configured through PGHOST and friends.
func (c *Cluster) Env(db string) map[string]string {
	return map[string]string{
		"PGHOST":     host,
		"PGPORT":     strconv.Itoa(c.port),
		"PGUSER":     Superuser,
		"PGDATABASE": db,
		"PGSSLMODE":  "disable",
	}
}

// CreateDatabase creates an empty database called name and returns its DSN.
// Giving each test its own database keeps tests that share a cluster from
// seeing each other's state.
func (c *Cluster) CreateDatabase(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatalf("pgtest: connect to create database %q: %v%s", name, err, c.logTail())
	}
	defer conn.Close(context.Background())

	// CREATE DATABASE takes no parameters, so the name must be quoted.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %q: %v%s", name, err, c.logTail())
	}
	return c.DSN(name)
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.stopLocked("fast"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// StopImmediate kills the cluster without a shutdown checkpoint
// (pg_ctl stop -m immediate), as if the server had crashed. The next
// Restart runs crash recovery. Committed data survives because only the
// server processes die; the OS page cache holding the WAL is unaffected.
func (c *Cluster) StopImmediate(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.stopLocked("immediate"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// Restart starts the cluster again on the same data directory and port and
// returns once it accepts connections (after any crash recovery). If the
// cluster is still running, it is first stopped with Stop's fast mode.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		if err := c.stopLocked("fast"); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	if err := c.startLocked(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// startOnFreePort picks a port and starts the server, retrying with a new
// port if another process grabbed it between our probe and the server's
// bind; that window cannot be closed because postgres binds the port itself.
func (c *Cluster) startOnFreePort() error {
	const attempts = 3
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 1; ; i++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		c.port = port
		if err := c.writeConfig(); err != nil {
			return err
		}
		logStart := fileSize(c.logFile)
		err = c.startLocked()
		if err == nil {
			return nil
		}
		if i == attempts || !strings.Contains(c.readLogFrom(logStart), "Address already in use") {
			return err
		}
	}
}

// writeConfig stores the listen settings in postgresql.auto.conf (read
// after postgresql.conf, so it wins) so a plain "pg_ctl start" on the same
// data directory always comes back on the same port.
func (c *Cluster) writeConfig() error {
	conf := strings.Join([]string{
		"# Written by pgtest.",
		"listen_addresses = " + quoteConf(host),
		"port = " + strconv.Itoa(c.port),
		// Inside the cluster dir so parallel clusters never share a socket
		// directory and nothing is written to /var/run/postgresql.
		"unix_socket_directories = " + quoteConf(c.baseDir),
		// Survives a server crash (WAL is still written to the OS before
		// COMMIT returns), just not an OS crash, which tests never cause.
		"fsync = off",
		"",
	}, "\n")
	path := filepath.Join(c.dataDir, "postgresql.auto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if c.cred != nil {
		// The file normally exists already (initdb creates it, so ownership
		// is kept), but make sure the server can read it either way.
		if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	return nil
}

// startLocked starts the server and waits until it accepts connections.
// c.mu must be held.
func (c *Cluster) startLocked() error {
	// -w waits until postmaster.pid reports "ready", i.e. recovery is done
	// and connections are accepted. -p pins the postgres binary we found.
	err := c.run(c.bins.pgCtl, "start", "-w", "-t", "120",
		"-D", c.dataDir, "-l", c.logFile, "-p", c.bins.postgres)
	if err != nil {
		return err
	}
	c.running = true
	return nil
}

// stopLocked stops the server with the given pg_ctl shutdown mode.
// c.mu must be held.
func (c *Cluster) stopLocked(mode string) error {
	if !c.running {
		return errors.New("cluster is not running")
	}
	if err := c.run(c.bins.pgCtl, "stop", "-w", "-t", "120", "-D", c.dataDir, "-m", mode); err != nil {
		return err
	}
	c.running = false
	return nil
}

// cleanup stops the server if it may be running and removes all its files.
func (c *Cluster) cleanup(t testing.TB) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// postmaster.pid also covers a server whose start timed out and was
	// therefore never marked as running.
	_, pidErr := os.Stat(filepath.Join(c.dataDir, "postmaster.pid"))
	if c.running || pidErr == nil {
		c.running = true
		if err := c.stopLocked("fast"); err != nil {
			t.Errorf("pgtest: stopping cluster: %v", err)
			// Do not leave a server running on a deleted directory.
			_ = c.stopLocked("immediate")
		}
	}
	if err := os.RemoveAll(c.baseDir); err != nil {
		t.Errorf("pgtest: removing cluster dir: %v", err)
	}
}

// run executes a PostgreSQL binary as the server user. The error includes
// the command's output and the tail of the server log, since pg_ctl itself
// only says "see the log" when the server fails to start.
func (c *Cluster) run(bin string, args ...string) error {
	cmd := exec.Command(bin, args...)
	// The test's working directory may not be accessible to the server user.
	cmd.Dir = c.baseDir
	cmd.Env = serverEnv()
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	// Safe with CombinedOutput: with -l, pg_ctl redirects the server's
	// output to the log file, so the daemon does not hold our pipe open.
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n--- output ---\n%s%s",
			filepath.Base(bin), strings.Join(args, " "), err, out, c.logTail())
	}
	return nil
}

// logTail returns the end of the server log, formatted for appending to an
// error message, or "" if there is no log yet.
func (c *Cluster) logTail() string {
	const maxTail = 4 << 10
	tail := c.readLogFrom(max(fileSize(c.logFile)-maxTail, 0))
	if tail == "" {
		return ""
	}
	return "\n--- server log tail (" + c.logFile + ") ---\n" + tail
}

// readLogFrom returns the server log from byte offset off onwards.
func (c *Cluster) readLogFrom(off int64) string {
	f, err := os.Open(c.logFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, off, 1<<62))
	if err != nil {
		return ""
	}
	return string(b)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// freePort asks the kernel for an unused port on host.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// quoteConf quotes a string value for postgresql.conf.
func quoteConf(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// serverEnv is the environment for PostgreSQL binaries: ours minus any PG*
// variables, which would otherwise override the settings we pass (for
// example PGDATA or PGPORT inherited from a developer's shell).
func serverEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG")
	})
}

// serverCredentialOnce returns the credentials to run the server with, or
// nil to run it as the current user. initdb and postgres refuse to run as
// root, so root hands them to the postgres OS user.
var serverCredentialOnce = sync.OnceValues(func() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, but initdb and postgres refuse to run as root "+
			"and the OS user %q to run them as was not found (%v): create it "+
			"(useradd --system postgres) or install the Debian package postgresql (apt-get install postgresql)",
			"postgres", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse uid of user postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse gid of user postgres: %w", err)
	}
	// Groups is left empty, which drops root's supplementary groups.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
})

// checkSearchable reports an error if the server user could not traverse
// dir and its ancestors to reach the cluster directory inside dir.
func checkSearchable(dir string, cred *syscall.Credential) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		perm := fi.Mode().Perm()
		ok := perm&0o001 != 0
		if st, isUnix := fi.Sys().(*syscall.Stat_t); isUnix {
			ok = ok || (st.Uid == cred.Uid && perm&0o100 != 0) || (st.Gid == cred.Gid && perm&0o010 != 0)
		}
		if !ok {
			return fmt.Errorf("the postgres user cannot traverse %s (mode %v), so it cannot reach "+
				"the cluster directory under %s: set TMPDIR to a world-searchable directory such as /tmp",
				d, perm, dir)
		}
		if filepath.Dir(d) == d {
			return nil
		}
	}
}
