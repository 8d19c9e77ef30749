package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store"
)

// BenchOpener opens an empty store for a benchmark.
type BenchOpener func(b *testing.B) store.Store

// BenchAppend measures append throughput of ~1 KB diffs (Synthetic), each
// acknowledged only once durable:
//
//   - single: one writer, AppendDiff, so every diff is its own commit;
//   - batch=64: AppendDiffs of 64 diffs of 64 escrows, one commit each;
//   - group/writers=64: 64 concurrent writers, one escrow each, through a
//     Committer, which batches whatever queued during a commit.
//
// It reports diffs/s.
func BenchAppend(b *testing.B, open BenchOpener) {
	b.Run("single", func(b *testing.B) {
		s := open(b)
		ctx := context.Background()
		createSynthetic(b, s, 1, 1)
		ds := make([]store.Diff, b.N)
		for i := range ds {
			ds[i] = Synthetic(1, uint64(i+1))
		}
		b.SetBytes(int64(len(ds[0].Data)))
		b.ResetTimer()
		for i := range ds {
			if err := s.AppendDiff(ctx, ds[i]); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, b.N)
	})
	b.Run("batch=64", func(b *testing.B) {
		const width = 64
		s := open(b)
		ctx := context.Background()
		createSynthetic(b, s, width, 1)
		rounds := (b.N + width - 1) / width
		batches := make([][]store.Diff, rounds)
		for r := range batches {
			for id := uint64(1); id <= width; id++ {
				batches[r] = append(batches[r], Synthetic(id, uint64(r+1)))
			}
		}
		b.SetBytes(int64(len(batches[0][0].Data)))
		b.ResetTimer()
		for _, batch := range batches {
			if err := s.AppendDiffs(ctx, batch); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, rounds*width)
	})
	b.Run("group/writers=64", func(b *testing.B) {
		const writers = 64
		s := open(b)
		ctx := context.Background()
		createSynthetic(b, s, writers, 1)
		per := (b.N + writers - 1) / writers
		work := make([][]store.Diff, writers)
		for w := range work {
			for n := 1; n <= per; n++ {
				work[w] = append(work[w], Synthetic(uint64(w+1), uint64(n)))
			}
		}
		gc := NewCommitter(s, 0)
		defer gc.Close()
		b.SetBytes(int64(len(work[0][0].Data)))
		b.ResetTimer()
		var wg sync.WaitGroup
		for w := range work {
			wg.Go(func() {
				for _, d := range work[w] {
					if err := gc.Append(ctx, d); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		reportRate(b, per*writers)
	})
}

func reportRate(b *testing.B, diffs int) {
	b.ReportMetric(float64(diffs)/b.Elapsed().Seconds(), "diffs/s")
}

// createSynthetic creates sessions 1..n in epoch.
func createSynthetic(b testing.TB, s store.Store, n int, epoch uint64) {
	b.Helper()
	for id := uint64(1); id <= uint64(n); id++ {
		if err := s.CreateSession(context.Background(), SyntheticSnapshot(id, epoch)); err != nil {
			b.Fatal(err)
		}
	}
}

// RecoveryNonces is the length of the session BenchRecoveryInput recovers.
const RecoveryNonces = 100_000

// FillRecovery stores escrow id with RecoveryNonces synthetic diffs and a
// snapshot at the last multiple of K before the end, so recovery reads the
// snapshot and a tail of K diffs (the worst case short of K itself).
func FillRecovery(b testing.TB, s store.Store, id uint64) {
	b.Helper()
	ctx := context.Background()
	if err := s.CreateSession(ctx, SyntheticSnapshot(id, 1)); err != nil {
		b.Fatal(err)
	}
	const chunk = 1000
	batch := make([]store.Diff, 0, chunk)
	for n := uint64(1); n <= RecoveryNonces; n++ {
		batch = append(batch, Synthetic(id, n))
		if len(batch) == chunk || n == RecoveryNonces {
			if err := s.AppendDiffs(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	at := uint64(RecoveryNonces - store.DefaultSnapshotEvery)
	d := Synthetic(id, at)
	if err := s.PutSnapshot(ctx, store.Snapshot{EscrowID: id, Nonce: at, Root: d.Root, State: busyState()}); err != nil {
		b.Fatal(err)
	}
}

// busyState is a real session state with 200 live inferences: a large
// snapshot, as a busy session's would be.
var busyState = sync.OnceValue(func() []byte {
	o := sessiontest.DefaultOptions()
	o.EscrowID = 1 << 41
	f := sessiontest.New(7, o)
	q := f.Sequencer()
	for id := uint64(1); id <= 200; id++ {
		if _, err := q.Next(sessiontest.Start(id, 100, 200)); err != nil {
			panic(err)
		}
	}
	b, err := q.Replica.State().Marshal()
	if err != nil {
		panic(err)
	}
	return b
})

// BenchRecoveryInput measures reading what recovery of a RecoveryNonces
// session needs: every diff ("full"), or the snapshot and the diffs after
// it ("snapshot+tail"). The second must cost at most 5% of the first.
func BenchRecoveryInput(b *testing.B, s store.Store, id uint64) {
	ctx := context.Background()
	b.Run("full", func(b *testing.B) {
		for range b.N {
			n := loadDiffs(b, s, id, 1)
			if n != RecoveryNonces {
				b.Fatalf("loaded %d diffs, want %d", n, RecoveryNonces)
			}
		}
	})
	b.Run("snapshot+tail", func(b *testing.B) {
		for range b.N {
			snap, err := s.Snapshot(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			var st sessionpb.SessionState
			if err := st.Unmarshal(snap.State); err != nil {
				b.Fatal(err)
			}
			if n := loadDiffs(b, s, id, snap.Nonce); n != store.DefaultSnapshotEvery+1 {
				b.Fatalf("loaded %d diffs, want the snapshot's and %d after it", n, store.DefaultSnapshotEvery)
			}
		}
	})
}

// loadDiffs reads the escrow's diffs from nonce on, as recovery does, and
// returns how many it read.
func loadDiffs(b *testing.B, s store.Store, id, from uint64) int {
	n := 0
	for {
		ds, err := s.Diffs(context.Background(), id, from, 512)
		if err != nil {
			b.Fatal(err)
		}
		if len(ds) == 0 {
			return n
		}
		n += len(ds)
		from = ds[len(ds)-1].Nonce + 1
	}
}

// BenchPrune measures pruning one epoch. Each iteration has prepare fill a
// fresh epoch and return the store to prune it in (untimed), then prunes it
// (timed).
func BenchPrune(b *testing.B, prepare func(b *testing.B, epoch uint64) store.Store) {
	ctx := context.Background()
	for i := range b.N {
		epoch := uint64(1000 + i)
		b.StopTimer()
		s := prepare(b, epoch)
		b.StartTimer()
		if err := s.Prune(ctx, epoch); err != nil {
			b.Fatal(err)
		}
	}
}

// FillEpoch creates sessions sessions in epoch through the Store API, each
// with diffsPer diffs, escrow ids starting at epoch<<20.
func FillEpoch(b testing.TB, s store.Store, epoch uint64, sessions, diffsPer int) {
	b.Helper()
	ctx := context.Background()
	base := epoch << 20
	var batch []store.Diff
	for i := range uint64(sessions) {
		if err := s.CreateSession(ctx, SyntheticSnapshot(base+i, epoch)); err != nil {
			b.Fatal(err)
		}
		for n := 1; n <= diffsPer; n++ {
			batch = append(batch, Synthetic(base+i, uint64(n)))
		}
		if len(batch) >= 1000 || i == uint64(sessions-1) {
			if err := s.AppendDiffs(ctx, batch); err != nil {
				b.Fatal(fmt.Errorf("fill epoch %d: %w", epoch, err))
			}
			batch = batch[:0]
		}
	}
}
