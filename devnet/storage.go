package devnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/devshard/devshard/internal/pgcluster"
)

// Storage is where the hosts keep their sessions: the host setting
// storage.driver. It is a flag value (`devshard devnet --storage`).
type Storage string

// The storages a devnet runs its hosts on.
const (
	StorageSQLite   Storage = "sqlite"
	StoragePostgres Storage = "postgres"
	// StorageHybrid is Postgres with a local SQLite fallback on each host.
	StorageHybrid Storage = "hybrid"
)

// ParseStorage reads a storage name.
func ParseStorage(s string) (Storage, error) {
	switch st := Storage(s); st {
	case StorageSQLite, StoragePostgres, StorageHybrid:
		return st, nil
	}
	return "", fmt.Errorf("the devnet's storage must be sqlite, postgres or hybrid, got %q", s)
}

// Set implements pflag.Value.
func (s *Storage) Set(v string) error {
	st, err := ParseStorage(v)
	if err != nil {
		return err
	}
	*s = st
	return nil
}

func (s *Storage) String() string { return string(*s) }

// Type implements pflag.Value.
func (s *Storage) Type() string { return "storage" }

func (s Storage) usesPostgres() bool { return s == StoragePostgres || s == StorageHybrid }

// PostgresRef describes, in devnet.json, the cluster the hosts store in.
type PostgresRef struct {
	Address string `json:"address"`
	// Own is true for the devnet's own cluster, in DataDir; false for the
	// operator's, named by the PG* variables.
	Own     bool   `json:"own"`
	DataDir string `json:"data_dir,omitempty"`
	Log     string `json:"log,omitempty"`
}

// pgServer is the Postgres cluster a devnet's hosts store in.
type pgServer struct {
	own *pgcluster.Cluster // nil: the operator's cluster
	// env are the PG* variables every host gets, but PGDATABASE.
	env map[string]string
	ref PostgresRef
}

// hostDatabase is host i's database.
func hostDatabase(i int) string { return fmt.Sprintf("devnet_host%d", i) }

// startPostgres brings up the cluster the hosts store in (the one PGHOST
// names, or the devnet's own under its home) and makes each host's
// database. A new network refuses databases that exist already: their
// sessions would be another network's.
func startPostgres(ctx context.Context, cfg Config, resumed bool, step func(string, ...any)) (*pgServer, error) {
	var (
		s    *pgServer
		conn *pgx.Conn
		err  error
	)
	if os.Getenv("PGHOST") != "" {
		s = operatorPostgres()
		step("using the Postgres cluster at %s (from PGHOST)", s.ref.Address)
		conn, err = connectOperator(ctx)
	} else {
		if s, err = ownPostgres(cfg.Home, step); err != nil {
			return nil, err
		}
		step("Postgres is up on %s (log %s)", s.ref.Address, s.ref.Log)
		conn, err = pgx.Connect(ctx, s.own.DSN("postgres"))
	}
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("postgres at %s: %w", s.ref.Address, err)
	}
	defer conn.Close(context.Background())
	for i := range cfg.Hosts {
		db := hostDatabase(i)
		created, err := pgcluster.CreateDatabase(ctx, conn, db)
		switch {
		case err != nil:
			s.stop()
			return nil, fmt.Errorf("postgres at %s: %w", s.ref.Address, err)
		case !created && !resumed:
			s.stop()
			return nil, fmt.Errorf("database %s already exists on the Postgres at %s, but the network in %s is new: "+
				"drop it (dropdb %s) or point PGHOST at another cluster", db, s.ref.Address, cfg.Home, db)
		case created && resumed:
			step("host%d's database %s was missing on %s; created it empty", i, db, s.ref.Address)
		}
	}
	return s, nil
}

// ownPostgres starts the devnet's own cluster in <home>/postgres: made on
// the first run, started again on its data (and, if still free, its port)
// by every later one.
func ownPostgres(home string, step func(string, ...any)) (*pgServer, error) {
	dir := filepath.Join(home, "postgres")
	step("starting Postgres: a cluster of the devnet's own in %s", dir)
	other, err := pgcluster.RunsAsOtherUser()
	if err != nil {
		return nil, err
	}
	if other {
		// The server runs as the postgres user, which must pass through
		// the home to its directory; o+x lets it, without listing.
		if err := os.Chmod(home, 0o711); err != nil {
			return nil, err
		}
	}
	c, err := pgcluster.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	err = c.Start()
	if errors.Is(err, pgcluster.ErrPortInUse) {
		step("Postgres's port %d is taken now; moving it to a free one", c.Port())
		err = c.StartOnFreePort()
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	env := c.Env("")
	delete(env, "PGDATABASE")
	return &pgServer{own: c, env: env,
		ref: PostgresRef{Address: c.Addr(), Own: true, DataDir: c.DataDir(), Log: c.LogPath()}}, nil
}

// operatorPostgres is the cluster the PG* variables name; the hosts get
// every PG* variable of this process but PGDATABASE.
func operatorPostgres() *pgServer {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") && k != "PGDATABASE" {
			env[k] = v
		}
	}
	port := env["PGPORT"]
	if port == "" {
		port = "5432"
	}
	return &pgServer{env: env, ref: PostgresRef{Address: net.JoinHostPort(env["PGHOST"], port)}}
}

// connectOperator connects to the operator's cluster as the PG* variables
// say, to PGDATABASE if set and to the maintenance database otherwise.
func connectOperator(ctx context.Context) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	if os.Getenv("PGDATABASE") == "" {
		cc.Database = "postgres"
	}
	return pgx.ConnectConfig(ctx, cc)
}

// hostEnv is the PG* environment of the host that stores in database db.
func (s *pgServer) hostEnv(db string) map[string]string {
	env := map[string]string{"PGDATABASE": db}
	for k, v := range s.env {
		env[k] = v
	}
	return env
}

// stop stops the devnet's own cluster if it runs; the operator's is
// theirs to run.
func (s *pgServer) stop() error {
	if s == nil || s.own == nil || !s.own.Running() {
		return nil
	}
	return s.own.Stop(pgcluster.Fast)
}
