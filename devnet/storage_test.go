package devnet

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgcluster"
	"github.com/devshard/devshard/internal/pgtest"
)

func TestParseStorage(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"sqlite", "postgres", "hybrid"} {
		got, err := ParseStorage(s)
		require.NoError(t, err)
		require.Equal(t, Storage(s), got)
	}
	_, err := ParseStorage("mysql")
	require.EqualError(t, err, `the devnet's storage must be sqlite, postgres or hybrid, got "mysql"`)

	cfg := Config{Home: t.TempDir(), Binary: "devshard"}
	require.NoError(t, cfg.defaults())
	require.Equal(t, StorageSQLite, cfg.Storage, "SQLite unless asked")
	cfg.Storage = "Postgres"
	require.EqualError(t, cfg.defaults(), `the devnet's storage must be sqlite, postgres or hybrid, got "Postgres"`)
}

// A home keeps the storage it was made with: resumed on another, the hosts
// would start empty and their sessions stay behind.
func TestResumeRefusesAnotherStorage(t *testing.T) {
	t.Parallel()
	cfg := Config{Home: t.TempDir(), Hosts: 1, Storage: StorageSQLite}
	_, resumed, err := loadSetup(cfg)
	require.NoError(t, err)
	require.False(t, resumed)

	cfg.Storage = StoragePostgres
	_, _, err = loadSetup(cfg)
	require.EqualError(t, err, filepath.Join(cfg.Home, "setup.json")+" was made with storage sqlite, asked for postgres "+
		"(the hosts' sessions would stay behind): pass --storage sqlite, or another --home for a different storage")

	// A home from before the storage was recorded stored in SQLite.
	raw, err := os.ReadFile(filepath.Join(cfg.Home, "setup.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(cfg.Home, "setup.json"),
		[]byte(strings.Replace(string(raw), `"storage": "sqlite",`, "", 1)), 0o600))
	cfg.Storage = StorageSQLite
	_, resumed, err = loadSetup(cfg)
	require.NoError(t, err)
	require.True(t, resumed)

	// Nor may it change its validators: they are fixed at genesis.
	cfg.Validators = 4
	_, _, err = loadSetup(cfg)
	require.EqualError(t, err, filepath.Join(cfg.Home, "setup.json")+" was made with 1 validator(s), asked for 4 "+
		"(a chain's validators are fixed at its genesis): pass --validators 1, or another --home for a different network")
}

// The devnet on Postgres: its own cluster under its home, a database per
// host, requests served and settled, each host saying it stores there, and
// the cluster stopped with the devnet.
func TestDevnetOnPostgres(t *testing.T) {
	for _, storage := range []Storage{StoragePostgres, StorageHybrid} {
		t.Run(string(storage), func(t *testing.T) {
			t.Setenv("PGHOST", "") // the devnet's own cluster, whatever the shell says
			began := time.Now()
			var (
				home string
				pg   *pgcluster.Cluster
			)
			e := startNetwork(t, 5*time.Minute, func(c *Config) {
				// Not t.TempDir: the postgres user must reach the home when
				// the test runs as root, and t.TempDir's parent is 0700.
				var err error
				home, err = os.MkdirTemp("", "devnet-pg-")
				require.NoError(t, err)
				t.Cleanup(func() { // runs after the devnet closed
					if pg != nil {
						require.False(t, pg.Running(), "the cluster stops with the devnet")
						require.NoFileExists(t, filepath.Join(pg.DataDir(), "postmaster.pid"))
					}
					os.RemoveAll(home)
				})
				c.Home, c.Storage, c.Hosts = home, storage, 3
			})
			pg = e.nw.Postgres()
			require.NotNil(t, pg, "the devnet runs its own cluster when PGHOST is unset")
			require.Equal(t, filepath.Join(home, "postgres", "data"), pg.DataDir())

			e.send(6, 3, string(storage))
			require.NoError(t, e.nw.Gateway.Gateway.SettleAll(e.ctx))
			list, err := e.nw.Gateway.Gateway.Settled(e.ctx)
			require.NoError(t, err)
			require.NotEmpty(t, list)
			for _, s := range list {
				e.readSettlement(s.ID, s.TxHash) // settled on chain
			}

			for i, h := range e.nw.Hosts {
				require.Equal(t, hostDatabase(i), h.Database)
				log, err := os.ReadFile(h.LogPath)
				require.NoError(t, err)
				require.Regexp(t, `storage ready.*mode=`+string(storage), string(log), "%s's log", h.Name)
			}

			var info Info
			raw, err := os.ReadFile(filepath.Join(home, "devnet.json"))
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(raw, &info))
			require.Equal(t, storage, info.Storage)
			require.Equal(t, &PostgresRef{Address: pg.Addr(), Own: true, DataDir: pg.DataDir(), Log: pg.LogPath()}, info.Postgres)
			require.Equal(t, "devnet_host2", info.Hosts[2].Database)
			t.Logf("%s devnet: started, served, settled in %s", storage, time.Since(began).Round(time.Second))
		})
	}
}

// A devnet run again on its home starts its cluster again on the same data
// and port and finds the hosts' databases there; a new network on a
// cluster that holds them already refuses them. (The whole devnet cannot be
// resumed inside one test process: the chain keeps its database locked.)
func TestPostgresResumesOnItsData(t *testing.T) {
	t.Setenv("PGHOST", "")
	home, err := os.MkdirTemp("", "devnet-pg-") // not t.TempDir: see TestDevnetOnPostgres
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(home) })
	cfg := Config{Home: home, Hosts: 2, Storage: StoragePostgres}
	var progress []string
	step := func(format string, args ...any) { progress = append(progress, fmt.Sprintf(format, args...)) }

	pg, err := startPostgres(t.Context(), cfg, false, step)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pg.own.Remove() })
	addr := pg.ref.Address
	require.Equal(t, map[string]string{"PGHOST": "127.0.0.1", "PGPORT": strconv.Itoa(pg.own.Port()),
		"PGUSER": "postgres", "PGSSLMODE": "disable", "PGDATABASE": "devnet_host1"}, pg.hostEnv("devnet_host1"))
	require.NoError(t, pg.stop())
	require.False(t, pg.own.Running())

	progress = nil
	pg, err = startPostgres(t.Context(), cfg, true, step)
	require.NoError(t, err)
	require.Equal(t, addr, pg.ref.Address, "the cluster comes back on its port")
	require.Equal(t, []string{
		"starting Postgres: a cluster of the devnet's own in " + filepath.Join(home, "postgres"),
		"Postgres is up on " + addr + " (log " + filepath.Join(home, "postgres", "server.log") + ")",
	}, progress, "the hosts' databases are found, not made again")
	require.NoError(t, pg.stop())

	_, err = startPostgres(t.Context(), cfg, false, step)
	require.EqualError(t, err, "database devnet_host0 already exists on the Postgres at "+addr+
		", but the network in "+home+" is new: drop it (dropdb devnet_host0) or point PGHOST at another cluster")
	require.NoFileExists(t, filepath.Join(pg.own.DataDir(), "postmaster.pid"), "a refused start leaves the cluster stopped")
}

// With PGHOST set the devnet makes the hosts' databases on that cluster,
// hands the hosts the operator's PG* variables with their own database,
// and leaves the cluster running when it stops: it is not the devnet's.
func TestPostgresFromPGHOST(t *testing.T) {
	c := pgtest.Start(t)
	for k, v := range c.Env("") {
		t.Setenv(k, v)
	}
	t.Setenv("PGAPPNAME", "devnet-test")
	cfg := Config{Home: t.TempDir(), Hosts: 2, Storage: StorageHybrid}
	var progress []string
	step := func(format string, args ...any) { progress = append(progress, fmt.Sprintf(format, args...)) }

	pg, err := startPostgres(t.Context(), cfg, false, step)
	require.NoError(t, err)
	addr := c.Host() + ":" + strconv.Itoa(c.Port())
	require.Equal(t, []string{"using the Postgres cluster at " + addr + " (from PGHOST)"}, progress)
	require.Equal(t, &PostgresRef{Address: addr}, &pg.ref)
	require.Nil(t, pg.own)
	env := pg.hostEnv("devnet_host1")
	require.Equal(t, "devnet_host1", env["PGDATABASE"])
	require.Equal(t, "devnet-test", env["PGAPPNAME"])
	require.Equal(t, strconv.Itoa(c.Port()), env["PGPORT"])
	require.NoError(t, pg.stop())

	// The databases are there, and the cluster still runs.
	_, err = startPostgres(t.Context(), cfg, true, step)
	require.NoError(t, err)
	require.Len(t, progress, 2, "no database was missing")
}
