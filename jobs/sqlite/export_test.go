package sqlite_test

import (
	"database/sql"
	"testing"

	"github.com/devshard/devshard/internal/sqlitedb"
)

func sqlitedbOpen(t *testing.T, path string) *sql.DB {
	t.Helper()
	return sqlitedb.Open(path, sqlitedb.Options{})
}
