package host

import (
	"context"
	"fmt"
	"testing"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionbench"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/sqlite"
)

// BenchmarkHostApplySQLite is the host-side cost of one diff: decode,
// verify, persist to SQLite (synchronous=FULL), commit and sign. Compare
// with BenchmarkPureApply, measured on the same diffs.
func BenchmarkHostApplySQLite(b *testing.B) {
	benchHostApply(b, func(b *testing.B) store.Store {
		st, err := sqlite.Open(context.Background(), b.TempDir(), sqlite.Options{})
		if err != nil {
			b.Fatal(err)
		}
		return st
	})
}

// BenchmarkHostApplyPostgres is the same on Postgres with fsync and
// synchronous_commit on.
func BenchmarkHostApplyPostgres(b *testing.B) {
	c := pgtest.Start(b)
	c.Durable(b)
	n := 0
	benchHostApply(b, func(b *testing.B) store.Store {
		n++
		st, err := postgres.Open(context.Background(), postgres.Config{DSN: c.CreateDatabase(b, fmt.Sprintf("bench%d", n))})
		if err != nil {
			b.Fatal(err)
		}
		return st
	})
}

func benchHostApply(b *testing.B, open func(*testing.B) store.Store) {
	p, err := sessionbench.NewPipeline(21, 1000)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var e *Engine
	var closeStore func()
	i := len(p.Raw)
	for b.Loop() {
		if i == len(p.Raw) {
			b.StopTimer()
			if closeStore != nil {
				closeStore()
			}
			st := open(b)
			closeStore = func() { st.Close() }
			e = New(Config{Key: p.Fixture.SlotKey(0), Store: st, Escrows: staticEscrows{p.Fixture.Snapshot}, Executor: executor.Builtin{}})
			e.MarkReady()
			i = 0
			b.StartTimer()
		}
		if _, err := e.ApplyDiff(ctx, 21, p.Raw[i], nil); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	closeStore()
}

func BenchmarkPureApply(b *testing.B) {
	p, err := sessionbench.NewPipeline(21, 1000)
	if err != nil {
		b.Fatal(err)
	}
	var s *session.Session
	i := len(p.Diffs)
	for b.Loop() {
		if i == len(p.Diffs) {
			b.StopTimer()
			s, _ = session.New(p.Fixture.Snapshot, nil)
			i = 0
			b.StartTimer()
		}
		if _, err := s.Apply(p.Diffs[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
