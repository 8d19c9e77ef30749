package postgres_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/storetest"
)

// benchCluster starts a cluster for benchmarks with fsync turned back on,
// so that a commit is as durable as SQLite's synchronous=FULL.
func benchCluster(b *testing.B) *pgtest.Cluster {
	c := pgtest.Start(b)
	c.Durable(b)
	return c
}

// BenchmarkAppend: go test ./store/postgres -run '^$' -bench Append
func BenchmarkAppend(b *testing.B) {
	c := benchCluster(b)
	storetest.BenchAppend(b, func(b *testing.B) store.Store {
		return open(b, newDatabase(b, c))
	})
}

func BenchmarkRecoveryInput(b *testing.B) {
	c := benchCluster(b)
	s := open(b, newDatabase(b, c))
	storetest.FillRecovery(b, s, 1)
	b.ResetTimer()
	storetest.BenchRecoveryInput(b, s, 1)
}

// BenchmarkPrune drops an epoch of 10 and of 10,000 sessions (3 diffs
// each). The epoch is filled with bulk SQL to keep the setup short.
func BenchmarkPrune(b *testing.B) {
	c := benchCluster(b)
	for _, sessions := range []int{10, 10_000} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			dsn := newDatabase(b, c)
			s := open(b, dsn)
			conn, err := pgx.Connect(context.Background(), dsn)
			require.NoError(b, err)
			defer conn.Close(context.Background())
			snap, err := storetest.SyntheticSnapshot(1, 1).Marshal()
			require.NoError(b, err)
			d := storetest.Synthetic(1, 1)
			storetest.BenchPrune(b, func(b *testing.B, epoch uint64) store.Store {
				ctx := context.Background()
				require.NoError(b, s.PrepareEpoch(ctx, epoch))
				base := int64(epoch << 20)
				_, err := conn.Exec(ctx, `INSERT INTO sessions (epoch_id, escrow_id, snapshot)
					SELECT $1, $2 + g, $3 FROM generate_series(0, $4 - 1) g`, int64(epoch), base, snap, sessions)
				require.NoError(b, err)
				_, err = conn.Exec(ctx, `INSERT INTO diffs (epoch_id, escrow_id, nonce, root, data)
					SELECT $1, $2 + g, n, $3, $4 FROM generate_series(0, $5 - 1) g, generate_series(1, 3) n`,
					int64(epoch), base, d.Root, d.Data, sessions)
				require.NoError(b, err)
				_, err = conn.Exec(ctx, "CHECKPOINT")
				require.NoError(b, err)
				return s
			})
		})
	}
}
