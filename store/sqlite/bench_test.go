package sqlite_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

// BenchmarkAppend: go test ./store/sqlite -run '^$' -bench Append
// (add -tags sqlite_cgo for the cgo driver).
func BenchmarkAppend(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("sync="+sync, func(b *testing.B) {
			storetest.BenchAppend(b, func(b *testing.B) store.Store {
				return open(b, b.TempDir(), sqlite.Options{Synchronous: sync})
			})
		})
	}
}

func BenchmarkRecoveryInput(b *testing.B) {
	s := open(b, b.TempDir(), sqlite.Options{})
	storetest.FillRecovery(b, s, 1)
	b.ResetTimer()
	storetest.BenchRecoveryInput(b, s, 1)
}

// BenchmarkPrune prunes an epoch of 10 and of 10,000 sessions (3 diffs
// each). The epoch is filled with synchronous=NORMAL to keep the setup
// short, then the store is reopened with the default FULL and pruned.
func BenchmarkPrune(b *testing.B) {
	for _, sessions := range []int{10, 10_000} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			dir := b.TempDir()
			var s *sqlite.Store
			storetest.BenchPrune(b, func(b *testing.B, epoch uint64) store.Store {
				if s != nil {
					require.NoError(b, s.Close())
				}
				fill := open(b, dir, sqlite.Options{Synchronous: "NORMAL"})
				storetest.FillEpoch(b, fill, epoch, sessions, 3)
				require.NoError(b, fill.Close())
				s = open(b, dir, sqlite.Options{})
				// Recovery touches the files of live epochs after a restart.
				_, err := s.ListSessions(context.Background())
				require.NoError(b, err)
				return s
			})
		})
	}
}
