package sqlitedb_test

import (
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/sqlitedb"
)

func pragma(t *testing.T, db *sql.DB, name string) string {
	t.Helper()
	var v string
	require.NoError(t, db.QueryRow("PRAGMA "+name).Scan(&v))
	return v
}

// Every pool runs in WAL mode at the durability it was asked for, FULL
// unless told otherwise: an acknowledged diff must survive power loss.
func TestOpenAppliesSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		synchronous string
		want        string // PRAGMA synchronous reads back a number
	}{
		{"", "2"},
		{"FULL", "2"},
		{"NORMAL", "1"},
	} {
		t.Run("synchronous="+tc.synchronous, func(t *testing.T) {
			t.Parallel()
			db := sqlitedb.Open(filepath.Join(t.TempDir(), "x.db"), sqlitedb.Options{Synchronous: tc.synchronous})
			defer db.Close()
			require.Equal(t, "wal", pragma(t, db, "journal_mode"))
			require.Equal(t, tc.want, pragma(t, db, "synchronous"))
			require.Equal(t, "5000", pragma(t, db, "busy_timeout"))
			require.Equal(t, 1, db.Stats().MaxOpenConnections, "one writer per file by default")
		})
	}
}

// A read pool cannot write, so a reader can never race the file's single
// writer.
func TestOpenReadOnly(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "x.db")
	w := sqlitedb.Open(path, sqlitedb.Options{})
	defer w.Close()
	_, err := w.Exec("CREATE TABLE t (x INTEGER)")
	require.NoError(t, err)

	r := sqlitedb.Open(path, sqlitedb.Options{ReadOnly: true, MaxConns: 3})
	defer r.Close()
	require.Equal(t, 3, r.Stats().MaxOpenConnections)
	var n int
	require.NoError(t, r.QueryRow("SELECT count(*) FROM t").Scan(&n))
	_, err = r.Exec("INSERT INTO t VALUES (1)")
	require.Error(t, err, "a read-only pool refuses writes")
}

// A setting the driver refuses fails the connection, naming the setting
// and the file, instead of handing out a connection that runs without it.
func TestOpenReportsRefusedSetting(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "x.db")
	db := sqlitedb.Open(path, sqlitedb.Options{Synchronous: "NOT A LEVEL"})
	defer db.Close()
	err := db.Ping()
	require.ErrorContains(t, err, "PRAGMA synchronous = NOT A LEVEL on "+path)
}
