//go:build sqlite_cgo

package sqlite

// The cgo driver, kept buildable so the driver comparison in
// docs/BENCHMARKS.md can be reproduced: go test -tags sqlite_cgo -bench .
import _ "github.com/mattn/go-sqlite3"

// DriverName is the database/sql driver the store runs on.
const DriverName = "sqlite3"
