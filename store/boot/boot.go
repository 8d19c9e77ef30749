// Package boot opens a host's store the way the host daemon runs it: it
// picks the driver from the configuration and the PG* environment, wraps it
// with epoch retention, and migrates a legacy database on first boot.
package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/hybrid"
	"github.com/devshard/devshard/store/legacy"
	"github.com/devshard/devshard/store/managed"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/sqlite"
)

// Mode picks the driver.
type Mode string

// Modes.
const (
	// Auto is Postgres when PGHOST is set, SQLite otherwise.
	Auto     Mode = ""
	SQLite   Mode = "sqlite"
	Postgres Mode = "postgres"
	// Hybrid is Postgres primary with a local SQLite fallback; it needs
	// PGHOST.
	Hybrid Mode = "hybrid"
)

// Config configures Open.
type Config struct {
	Mode Mode
	// Dir is the local directory: the SQLite store, the hybrid fallback, and
	// the Postgres marker.
	Dir string
	// Synchronous is the SQLite files' durability, FULL (the default) or
	// NORMAL: the SQLite store's, and the hybrid driver's local fallback's.
	Synchronous string
	// Legacy is the path of a pre-epoch database to migrate on first boot;
	// empty for none. EpochOf gives each legacy escrow's epoch.
	Legacy  string
	EpochOf legacy.EpochOf
	// Progress, if set, is told how the migration advances.
	Progress legacy.Progress
	// Retention configures the managed wrapper. If Retention.Current is set,
	// Open learns the current epoch from it before migrating, so legacy
	// sessions of pruned epochs are dropped rather than stored.
	Retention managed.Options
	// Getenv reads the environment (default os.Getenv).
	Getenv func(string) string
}

// Opened is an open store and what boot did.
type Opened struct {
	*managed.Store
	Mode Mode
	// Synchronous is the durability the SQLite store's connections report;
	// empty when the store is not SQLite alone.
	Synchronous string
	Legacy      *legacy.Report
}

// Open opens the store.
func Open(ctx context.Context, cfg Config) (*Opened, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	mode := cfg.Mode
	pg := getenv("PGHOST") != ""
	switch {
	case mode == Auto && pg:
		mode = Postgres
	case mode == Auto:
		mode = SQLite
	case (mode == Postgres || mode == Hybrid) && !pg:
		return nil, fmt.Errorf("store mode %s needs Postgres: set PGHOST (and PGPORT, PGUSER, PGDATABASE, PGPASSWORD as needed)", mode)
	}
	if cfg.Dir == "" && mode != Postgres {
		return nil, fmt.Errorf("store mode %s needs a local directory", mode)
	}
	inner, err := openDriver(ctx, mode, cfg.Dir, cfg.Synchronous, postgresDSN(getenv))
	if err != nil {
		return nil, err
	}
	m := managed.New(inner, cfg.Retention)
	o := &Opened{Store: m, Mode: mode}
	if s, ok := inner.(*sqlite.Store); ok {
		if o.Synchronous, err = s.Synchronous(ctx); err != nil {
			m.Close()
			return nil, err
		}
	}
	if cfg.Retention.Current != nil {
		if err := m.CatchUp(ctx); err != nil && !errors.Is(err, store.ErrUnavailable) {
			m.Close()
			return nil, fmt.Errorf("store: learn the current epoch: %w", err)
		}
	}
	if cfg.Legacy != "" {
		if cfg.EpochOf == nil {
			m.Close()
			return nil, errors.New("store: a legacy database is configured but no epoch lookup (EpochOf) to migrate it with")
		}
		if o.Legacy, err = legacy.Migrate(ctx, cfg.Legacy, m, cfg.EpochOf, cfg.Progress); err != nil {
			m.Close()
			return nil, err
		}
	}
	return o, nil
}

func openDriver(ctx context.Context, mode Mode, dir, synchronous, dsn string) (store.Store, error) {
	switch mode {
	case SQLite:
		return sqlite.Open(ctx, dir, sqlite.Options{Synchronous: synchronous})
	case Hybrid:
		return hybrid.Open(ctx, hybrid.Config{Dir: dir, SQLite: sqlite.Options{Synchronous: synchronous}, Postgres: postgres.Config{DSN: dsn}})
	case Postgres:
		s, err := postgres.Open(ctx, postgres.Config{DSN: dsn})
		if err != nil {
			return nil, err
		}
		if dir == "" {
			return s, nil
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			s.Close()
			return nil, err
		}
		m := &markedPostgres{Store: s, dir: dir}
		if err := m.sync(ctx); err != nil {
			s.Close()
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("unknown store mode %q: use sqlite, postgres or hybrid", mode)
}

// markedPostgres is the Postgres driver with a local directory. It keeps the
// marker in dir in step with whether Postgres holds sessions, as the hybrid
// driver does, so that a later SQLite-only boot on dir refuses to run: the
// marker is written before the first session is created and checked again
// after every prune, the only way sessions go.
type markedPostgres struct {
	*postgres.Store
	dir string

	mu     sync.Mutex // held across a create and across a recount, so neither misses the other
	marked bool       // the marker is known to be written
}

// CreateSession writes the marker first: Postgres must never hold a session
// that a SQLite-only boot would not know to look for.
func (p *markedPostgres) CreateSession(ctx context.Context, snap *sessionpb.EscrowSnapshot) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.marked {
		n, err := p.CountSessions(ctx)
		if err != nil {
			return err
		}
		if err := p.write(n + 1); err != nil {
			return err
		}
	}
	return p.Store.CreateSession(ctx, snap)
}

// Prune prunes epoch, then removes the marker if Postgres holds no session.
func (p *markedPostgres) Prune(ctx context.Context, epoch uint64) error {
	if err := p.Store.Prune(ctx, epoch); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sync(ctx)
}

// sync writes the marker while Postgres holds sessions and removes it once
// it holds none. Open calls it before the store is shared; others hold p.mu.
func (p *markedPostgres) sync(ctx context.Context) error {
	n, err := p.CountSessions(ctx)
	if err != nil {
		return err
	}
	if n == 0 {
		p.marked = false
		return sqlite.RemoveMarker(p.dir)
	}
	return p.write(n)
}

func (p *markedPostgres) write(sessions int) error {
	if err := sqlite.WriteMarker(p.dir, sqlite.Marker{Postgres: p.Name(), Sessions: sessions, Written: time.Now().UTC()}); err != nil {
		return err
	}
	p.marked = true
	return nil
}

// pgVars maps the standard libpq variables to connection keywords.
var pgVars = []struct{ env, key string }{
	{"PGHOST", "host"}, {"PGPORT", "port"}, {"PGUSER", "user"}, {"PGPASSWORD", "password"},
	{"PGDATABASE", "dbname"}, {"PGSSLMODE", "sslmode"}, {"PGCONNECT_TIMEOUT", "connect_timeout"},
	{"PGAPPNAME", "application_name"}, {"PGPASSFILE", "passfile"}, {"PGSERVICE", "service"},
}

// postgresDSN renders the PG* variables read through getenv as a
// keyword/value connection string.
func postgresDSN(getenv func(string) string) string {
	var parts []string
	for _, v := range pgVars {
		if val := getenv(v.env); val != "" {
			parts = append(parts, v.key+"='"+strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(val)+"'")
		}
	}
	return strings.Join(parts, " ")
}
