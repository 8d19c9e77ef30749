//go:build !sqlite_cgo

package sqlitedb

// modernc.org/sqlite, a pure-Go translation of SQLite, is the driver: on our
// append workload its medians were 1.05-1.3x those of the cgo driver
// github.com/mattn/go-sqlite3 (docs/BENCHMARKS.md, "Host storage"), and it
// keeps the host binary free of cgo. Build with -tags sqlite_cgo to run the
// same store, tests and benchmarks on the cgo driver.
import _ "modernc.org/sqlite"

// DriverName is the database/sql driver every devshard SQLite file runs on.
const DriverName = "sqlite"
