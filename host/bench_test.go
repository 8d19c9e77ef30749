package host_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/devshard/devshard/host/hostbench"
	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/boot"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/sqlite"
)

// BenchmarkHostApplySQLite is the host-side cost of one diff: decode,
// verify, persist to SQLite (synchronous=FULL), commit and sign. Compare
// with BenchmarkPureApply, measured on the same diffs.
func BenchmarkHostApplySQLite(b *testing.B) {
	w := applyWorkload(b)
	w.BenchHost(b, func(b *testing.B) store.Store {
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
	w := applyWorkload(b)
	c := pgtest.Start(b)
	c.Durable(b)
	n := 0
	w.BenchHost(b, func(b *testing.B) store.Store {
		n++
		st, err := postgres.Open(context.Background(), postgres.Config{DSN: c.CreateDatabase(b, fmt.Sprintf("bench%d", n))})
		if err != nil {
			b.Fatal(err)
		}
		return st
	})
}

// BenchmarkPureApply is session.Apply alone on the same diffs.
func BenchmarkPureApply(b *testing.B) {
	applyWorkload(b).BenchPure(b)
}

func applyWorkload(b *testing.B) *hostbench.ApplyWorkload {
	w, err := hostbench.NewApplyWorkload()
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// BenchmarkHostStartup starts a host daemon over 1,000 stored sessions of
// 1,000 nonces each, with the snapshots a host writes (K = 500), and
// reports the time to the first 200 on /healthz and to every session
// recovered. Building the stored state takes about a minute; run it with
// -benchtime 3x.
func BenchmarkHostStartup(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	st, err := sqlite.Open(ctx, dir, sqlite.Options{Synchronous: "NORMAL"})
	if err != nil {
		b.Fatal(err)
	}
	s, err := hostbench.BuildStartup(ctx, st, hostbench.StartupOptions{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	var listening, recovered time.Duration
	for b.Loop() {
		t, err := s.Run(ctx, func(ctx context.Context) (store.Store, error) {
			return boot.Open(ctx, boot.Config{Mode: boot.SQLite, Dir: dir, Getenv: func(string) string { return "" }})
		})
		if err != nil {
			b.Fatal(err)
		}
		listening += t.Listening
		recovered += t.Recovered
	}
	b.ReportMetric(float64(listening.Microseconds())/1e3/float64(b.N), "listen-ms")
	b.ReportMetric(float64(recovered.Microseconds())/1e3/float64(b.N), "recovered-ms")
}
