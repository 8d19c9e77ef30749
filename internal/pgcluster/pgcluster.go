// Package pgcluster runs a private PostgreSQL cluster from the installed
// server binaries: initdb on first use, pg_ctl to start and stop it, one
// TCP port on 127.0.0.1 with trust authentication. The test helper pgtest
// and `devshard devnet --storage postgres` both run their clusters with it.
//
// A cluster lives in one directory (data/, server.log, the socket) and can
// be stopped (cleanly or as a crash would) and started again on the same
// data and port. Opening the directory again later, from another process,
// reuses the data and the port.
//
// initdb and postgres refuse to run as root. When this process runs as
// root, the server runs as the unprivileged "postgres" OS user, which must
// be able to reach the directory.
package pgcluster

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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// Superuser is the database superuser of every cluster. initdb is run with
// -U Superuser so the name does not depend on which OS user ran it.
const Superuser = "postgres"

// Host is the only address clusters listen on, so a trust-authenticated
// server is never exposed to the network.
const Host = "127.0.0.1"

// StopMode is a pg_ctl shutdown mode.
type StopMode string

const (
	// Fast terminates open sessions and writes a shutdown checkpoint.
	Fast StopMode = "fast"
	// Immediate kills the server without a checkpoint, as a crash would;
	// the next start runs crash recovery. Committed data survives: only the
	// server processes die, the WAL already written is kept.
	Immediate StopMode = "immediate"
)

// ErrPortInUse is returned by Start when another process holds the
// cluster's port.
var ErrPortInUse = errors.New("the cluster's port is in use by another process")

// Cluster is one cluster directory. Its methods are safe for concurrent use.
type Cluster struct {
	bins    binaries
	cred    *syscall.Credential // nil: run the server as the current user
	dir     string              // owned by the server user; holds data, socket, log
	dataDir string
	logFile string

	// mu serialises start and stop so concurrent calls from a failover
	// test cannot interleave pg_ctl invocations.
	mu      sync.Mutex
	port    int
	running bool
}

// Open prepares the cluster in dir, creating dir and running initdb if dir
// holds no cluster yet. It does not start the server. The error of a
// missing PostgreSQL installation says what to install.
func Open(dir string) (*Cluster, error) {
	bins, err := findBinariesOnce()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredentialOnce()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{bins: bins, cred: cred, dir: dir,
		dataDir: filepath.Join(dir, "data"), logFile: filepath.Join(dir, "server.log")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("chown %s to the postgres user: %w", dir, err)
		}
		if err := checkSearchable(filepath.Dir(dir), cred); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err == nil {
		c.port = c.configuredPort()
		return c, nil
	}
	// --no-sync: durability of the initial catalog does not matter to a
	// private cluster, and skipping fsync makes initdb much faster.
	if err := c.run(c.bins.initdb,
		"-D", c.dataDir, "-U", Superuser, "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, err
	}
	return c, nil
}

// Port returns the TCP port the cluster listens on (0 before its first
// start). It stays the same across Stop and Start.
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// Addr is Host:Port.
func (c *Cluster) Addr() string { return net.JoinHostPort(Host, strconv.Itoa(c.Port())) }

// Dir returns the cluster's directory.
func (c *Cluster) Dir() string { return c.dir }

// DataDir returns the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// LogPath is the server's log file.
func (c *Cluster) LogPath() string { return c.logFile }

// Running reports whether the server was started and not stopped since.
func (c *Cluster) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// DSN returns a connection URL for database db as the superuser.
func (c *Cluster) DSN(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     c.Addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Env returns libpq environment variables that point at database db, for
// child processes and for code configured through PGHOST and friends.
func (c *Cluster) Env(db string) map[string]string {
	return map[string]string{
		"PGHOST":     Host,
		"PGPORT":     strconv.Itoa(c.Port()),
		"PGUSER":     Superuser,
		"PGDATABASE": db,
		"PGSSLMODE":  "disable",
	}
}

// Start starts the server and returns once it accepts connections (after
// any crash recovery). A cluster that never ran gets a free port; one that
// did comes back on its port, or fails with ErrPortInUse. A server that is
// already running on the data directory (left by a process that died) is
// adopted.
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	if c.serverAlive() {
		c.running = true
		return nil
	}
	if c.port != 0 {
		return c.startLocked()
	}
	return c.startOnFreePortLocked()
}

// StartOnFreePort starts the server on a new free port, for a cluster whose
// port another process took while it was stopped.
func (c *Cluster) StartOnFreePort() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return errors.New("the cluster is running")
	}
	return c.startOnFreePortLocked()
}

// Stop stops the server in the given mode.
func (c *Cluster) Stop(mode StopMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(mode)
}

// Remove stops the server if it may be running and deletes the directory.
func (c *Cluster) Remove() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	// postmaster.pid also covers a server whose start timed out and was
	// therefore never marked as running.
	if c.running || c.serverAlive() {
		c.running = true
		if err := c.stopLocked(Fast); err != nil {
			errs = append(errs, err)
			// Do not leave a server running on a deleted directory.
			_ = c.stopLocked(Immediate)
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CreateDatabase creates the database name unless it exists, and reports
// whether it created it.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (bool, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return false, fmt.Errorf("connect to create database %q: %w%s", name, err, c.LogTail())
	}
	defer conn.Close(context.Background())
	return CreateDatabase(ctx, conn, name)
}

// CreateDatabase creates the database name over conn unless it exists, and
// reports whether it created it.
func CreateDatabase(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return false, fmt.Errorf("look up database %q: %w", name, err)
	}
	if exists {
		return false, nil
	}
	// CREATE DATABASE takes no parameters, so the name must be quoted.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return false, fmt.Errorf("create database %q: %w", name, err)
	}
	return true, nil
}

// startOnFreePortLocked picks a port and starts the server, retrying with a
// new port if another process grabbed it between our probe and the
// server's bind; that window cannot be closed because postgres binds the
// port itself. c.mu must be held.
func (c *Cluster) startOnFreePortLocked() error {
	const attempts = 3
	for i := 1; ; i++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		c.port = port
		err = c.startLocked()
		if err == nil || i == attempts || !errors.Is(err, ErrPortInUse) {
			return err
		}
	}
}

// startLocked writes the listen settings and starts the server on c.port.
// c.mu must be held.
func (c *Cluster) startLocked() error {
	if err := c.writeConfig(); err != nil {
		return err
	}
	logStart := fileSize(c.logFile)
	// -w waits until postmaster.pid reports "ready", i.e. recovery is done
	// and connections are accepted. -p pins the postgres binary we found.
	err := c.run(c.bins.pgCtl, "start", "-w", "-t", "120",
		"-D", c.dataDir, "-l", c.logFile, "-p", c.bins.postgres)
	if err != nil {
		// The server's own words are the only sign of a taken port.
		if strings.Contains(c.readLogFrom(logStart), "Address already in use") {
			return fmt.Errorf("port %d: %w (%v)", c.port, ErrPortInUse, err)
		}
		return err
	}
	c.running = true
	return nil
}

// stopLocked stops the server with the given pg_ctl shutdown mode.
// c.mu must be held.
func (c *Cluster) stopLocked(mode StopMode) error {
	if !c.running {
		return errors.New("the cluster is not running")
	}
	if err := c.run(c.bins.pgCtl, "stop", "-w", "-t", "120", "-D", c.dataDir, "-m", string(mode)); err != nil {
		return err
	}
	c.running = false
	return nil
}

// serverAlive reports whether a server runs on the data directory, by
// pg_ctl status (which checks postmaster.pid's process).
func (c *Cluster) serverAlive() bool {
	if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); err != nil {
		return false
	}
	return c.run(c.bins.pgCtl, "status", "-D", c.dataDir) == nil
}

// writeConfig stores the listen settings in postgresql.auto.conf (read
// after postgresql.conf, so it wins) so a plain "pg_ctl start" on the same
// data directory always comes back on the same port.
func (c *Cluster) writeConfig() error {
	conf := strings.Join([]string{
		"# Written by pgcluster.",
		"listen_addresses = " + quoteConf(Host),
		"port = " + strconv.Itoa(c.port),
		// Inside the cluster dir so parallel clusters never share a socket
		// directory and nothing is written to /var/run/postgresql.
		"unix_socket_directories = " + quoteConf(c.dir),
		// Survives a server crash (WAL is still written to the OS before
		// COMMIT returns), just not an OS crash.
		"fsync = off",
		"",
	}, "\n")
	path := filepath.Join(c.dataDir, "postgresql.auto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if c.cred != nil {
		if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	return nil
}

var portLine = regexp.MustCompile(`(?m)^port = (\d+)$`)

// configuredPort is the port writeConfig last wrote, 0 if none.
func (c *Cluster) configuredPort() int {
	raw, err := os.ReadFile(filepath.Join(c.dataDir, "postgresql.auto.conf"))
	if err != nil {
		return 0
	}
	m := portLine.FindSubmatch(raw)
	if m == nil {
		return 0
	}
	port, _ := strconv.Atoi(string(m[1]))
	return port
}

// run executes a PostgreSQL binary as the server user. The error includes
// the command's output and the tail of the server log, since pg_ctl itself
// only says "see the log" when the server fails to start.
func (c *Cluster) run(bin string, args ...string) error {
	cmd := exec.Command(bin, args...)
	// Our working directory may not be accessible to the server user.
	cmd.Dir = c.dir
	cmd.Env = serverEnv()
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	// Safe with CombinedOutput: with -l, pg_ctl redirects the server's
	// output to the log file, so the daemon does not hold our pipe open.
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n--- output ---\n%s%s",
			filepath.Base(bin), strings.Join(args, " "), err, out, c.LogTail())
	}
	return nil
}

// LogTail returns the end of the server log, formatted for appending to an
// error message, or "" if there is no log yet.
func (c *Cluster) LogTail() string {
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

// freePort asks the kernel for an unused port on Host.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(Host, "0"))
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

// RunsAsOtherUser reports whether the server runs as another OS user (the
// postgres user, because this process runs as root), which must be able to
// traverse every directory above a cluster's.
func RunsAsOtherUser() (bool, error) {
	cred, err := serverCredentialOnce()
	return cred != nil, err
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
				"the cluster directory under %s: put it under a world-searchable directory such as /tmp "+
				"(for tests: set TMPDIR to one)",
				d, perm, dir)
		}
		if filepath.Dir(d) == d {
			return nil
		}
	}
}
