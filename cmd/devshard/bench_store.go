package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

func newBenchStoreCommand() *cobra.Command {
	var rounds int
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Host storage (SQLite, the default driver): appends, recovery input, pruning",
		Long: `store measures the default SQLite store with synchronous=FULL in a temporary
directory: durable appends one at a time and batched, the recovery input of a
100,000-nonce session (snapshot plus tail against every diff), and pruning an
epoch of 10 against one of 10,000 sessions. Postgres figures come from
'go test ./store/postgres -bench .' (see docs/BENCHMARKS.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 {
				return fmt.Errorf("--rounds must be at least 1, got %d", rounds)
			}
			return benchStore(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), rounds)
		},
	}
	cmd.Flags().IntVar(&rounds, "rounds", 3, "measure each figure this many times and keep the median")
	return cmd
}

// withTB runs fn once with a testing.TB, so the store's shared benchmark
// fixtures can be used from a command. It reports whether fn failed.
func withTB(fn func(tb testing.TB)) error {
	var once sync.Once
	failed := true
	testing.Benchmark(func(b *testing.B) {
		once.Do(func() {
			fn(b)
			failed = b.Failed()
		})
	})
	if failed {
		return fmt.Errorf("benchmark setup failed")
	}
	return nil
}

func medianOf(v []time.Duration) time.Duration {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func benchStore(ctx context.Context, out, progress io.Writer, rounds int) error {
	if ctx == nil {
		ctx = context.Background()
	}
	root, err := os.MkdirTemp("", "devshard-bench-store-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	dir := func(name string) string { return root + "/" + name }
	open := func(d, sync string) (*sqlite.Store, error) {
		return sqlite.Open(ctx, d, sqlite.Options{Synchronous: sync})
	}

	// Appends: one diff per durable commit, and batches of 64.
	fmt.Fprintln(progress, "appends...")
	var single, batched []float64
	for r := range rounds {
		s, err := open(dir(fmt.Sprintf("append-%d", r)), "FULL")
		if err != nil {
			return err
		}
		for id := uint64(1); id <= 64; id++ {
			if err := s.CreateSession(ctx, storetest.SyntheticSnapshot(id, 1)); err != nil {
				return err
			}
		}
		const n = 300
		start := time.Now()
		for i := uint64(1); i <= n; i++ {
			if err := s.AppendDiff(ctx, storetest.Synthetic(1, i)); err != nil {
				return err
			}
		}
		single = append(single, n/time.Since(start).Seconds())
		start = time.Now()
		for round := uint64(1); round <= 30; round++ {
			batch := make([]store.Diff, 0, 63)
			for id := uint64(2); id <= 64; id++ {
				batch = append(batch, storetest.Synthetic(id, round))
			}
			if err := s.AppendDiffs(ctx, batch); err != nil {
				return err
			}
		}
		batched = append(batched, 30*63/time.Since(start).Seconds())
		s.Close()
	}

	fmt.Fprintln(progress, "recovery input: storing a 100,000-nonce session...")
	rs, err := open(dir("recovery"), "NORMAL")
	if err != nil {
		return err
	}
	defer rs.Close()
	if err := withTB(func(tb testing.TB) { storetest.FillRecovery(tb, rs, 1) }); err != nil {
		return err
	}
	var full, tail []time.Duration
	for range rounds {
		start := time.Now()
		if _, err := readDiffs(ctx, rs, 1, 1); err != nil {
			return err
		}
		full = append(full, time.Since(start))
		start = time.Now()
		snap, err := rs.Snapshot(ctx, 1)
		if err != nil {
			return err
		}
		if _, err := readDiffs(ctx, rs, 1, snap.Nonce); err != nil {
			return err
		}
		tail = append(tail, time.Since(start))
	}

	fmt.Fprintln(progress, "pruning: filling epochs of 10 and 10,000 sessions...")
	prune := map[int][]time.Duration{}
	for _, sessions := range []int{10, 10_000} {
		d := dir(fmt.Sprintf("prune-%d", sessions))
		for r := range rounds {
			epoch := uint64(100 + r)
			fill, err := open(d, "NORMAL")
			if err != nil {
				return err
			}
			if err := withTB(func(tb testing.TB) { storetest.FillEpoch(tb, fill, epoch, sessions, 3) }); err != nil {
				return err
			}
			fill.Close()
			s, err := open(d, "FULL")
			if err != nil {
				return err
			}
			start := time.Now()
			if err := s.Prune(ctx, epoch); err != nil {
				return err
			}
			prune[sessions] = append(prune[sessions], time.Since(start))
			s.Close()
		}
	}

	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	fmt.Fprintf(out, "BENCH sqlite_append_single_full %.0f diffs/s\n", med(single))
	fmt.Fprintf(out, "BENCH sqlite_append_batch64_full %.0f diffs/s\n", med(batched))
	fmt.Fprintf(out, "BENCH recovery_input_all_100k %.1f ms\n", float64(medianOf(full).Microseconds())/1e3)
	fmt.Fprintf(out, "BENCH recovery_input_snapshot_tail %.2f ms\n", float64(medianOf(tail).Microseconds())/1e3)
	fmt.Fprintf(out, "BENCH prune_epoch_10_sessions %.2f ms\n", float64(medianOf(prune[10]).Microseconds())/1e3)
	fmt.Fprintf(out, "BENCH prune_epoch_10000_sessions %.2f ms\n", float64(medianOf(prune[10_000]).Microseconds())/1e3)
	ratio(out, "recovery_snapshot_tail/all", float64(medianOf(tail))/float64(medianOf(full)), "<=", 0.05)
	ratio(out, "prune_10000/prune_10", float64(medianOf(prune[10_000]))/float64(medianOf(prune[10])), "<=", 2)
	return nil
}

// readDiffs reads an escrow's diffs from nonce on, as recovery does.
func readDiffs(ctx context.Context, s store.Store, id, from uint64) (int, error) {
	n := 0
	for {
		ds, err := s.Diffs(ctx, id, from, 512)
		if err != nil {
			return n, err
		}
		if len(ds) == 0 {
			return n, nil
		}
		n += len(ds)
		from = ds[len(ds)-1].Nonce + 1
	}
}
