package hybrid_test

import (
	"fmt"
	"testing"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/hybrid"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/storetest"
)

// BenchmarkAppend is the append workload on the hybrid driver with
// Postgres up (the primary; fsync turned back on) and the SQLite fallback
// beside it: go test ./store/hybrid -run '^$' -bench Append
func BenchmarkAppend(b *testing.B) {
	c := pgtest.Start(b)
	c.Durable(b)
	n := 0
	storetest.BenchAppend(b, func(b *testing.B) store.Store {
		n++
		return open(b, hybrid.Config{Dir: b.TempDir(), Postgres: postgres.Config{DSN: c.CreateDatabase(b, fmt.Sprintf("hbench%d", n))}})
	})
}
