package sqlite

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// MarkerFile is the name of the marker that a Postgres-backed store (hybrid
// or postgres mode) keeps in the local store directory while Postgres holds
// live sessions of this host. Open refuses to start SQLite-only beside it:
// the host would otherwise come up without those sessions and could sign
// conflicting states for them.
const MarkerFile = "POSTGRES_HOLDS_SESSIONS.json"

// Marker is the content of the marker file.
type Marker struct {
	// Postgres names the database: user@host:port/dbname.
	Postgres string    `json:"postgres"`
	Sessions int       `json:"sessions"`
	Written  time.Time `json:"written"`
}

// WriteMarker records that Postgres holds live sessions. The write is atomic
// and durable.
func WriteMarker(dir string, m Marker) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, MarkerFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("write Postgres marker: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("write Postgres marker %s: %w", path, err)
	}
	return nil
}

// RemoveMarker records that Postgres holds no live sessions any more.
func RemoveMarker(dir string) error {
	path := filepath.Join(dir, MarkerFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove Postgres marker: %w", err)
	}
	return syncDir(dir)
}

// ReadMarker returns the marker in dir, or nil if there is none.
func ReadMarker(dir string) (*Marker, error) {
	path := filepath.Join(dir, MarkerFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read Postgres marker: %w", err)
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("Postgres marker %s is unreadable (%v); it means Postgres may hold live sessions: check, then delete it", path, err)
	}
	return &m, nil
}

// checkMarker refuses a SQLite-only open while the marker exists.
func checkMarker(dir string) error {
	m, err := ReadMarker(dir)
	if err != nil || m == nil {
		return err
	}
	return fmt.Errorf("refusing to open %s with SQLite only: Postgres %s still holds %d live sessions of this host (marker written %s). "+
		"Set PGHOST and friends to reach it (hybrid or postgres mode); only once those sessions are settled and pruned, delete %s",
		dir, m.Postgres, m.Sessions, m.Written.Format(time.RFC3339), filepath.Join(dir, MarkerFile))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
