//go:build sqlite_cgo

package sqlitedb

// The cgo driver, kept buildable so the driver comparison in
// docs/BENCHMARKS.md can be reproduced:
// go test -tags sqlite_cgo -bench . ./store/sqlite
import _ "github.com/mattn/go-sqlite3"

// DriverName is the database/sql driver every devshard SQLite file runs on.
const DriverName = "sqlite3"
