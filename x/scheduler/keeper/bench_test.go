package keeper_test

import (
	"runtime"
	"testing"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/stretchr/testify/require"

	"cosmossdk.io/log"
	storetypes "cosmossdk.io/store/types"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/scheduler/types"
)

// The scheduler's per-block cost must follow the number of tasks due, not the
// number stored: 10 due among 100,000 stored should cost within 1.5x of 10 due
// among 100. Compare the two:
//
//	go test -run '^$' -bench BenchmarkSchedulerDue ./x/scheduler/keeper/
func BenchmarkSchedulerDue10Of100(b *testing.B)    { benchmarkDue(b, 100) }
func BenchmarkSchedulerDue10Of100000(b *testing.B) { benchmarkDue(b, 100_000) }

func benchmarkDue(b *testing.B, stored int) {
	const (
		due    = 10
		height = 1_000
	)
	s := storedTasks(b, stored, due, height)
	// The large store's setup garbage would otherwise be collected while
	// the timer runs.
	runtime.GC()

	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		// Each run starts from the committed state, the way a block does.
		ctx := sdk.NewContext(s.tctx.CMS.CacheMultiStore(), cmtproto.Header{Height: height}, false, log.NewNopLogger())
		b.StartTimer()
		require.NoError(b, s.k.RunDue(ctx))
	}
	b.StopTimer()
	require.Len(b, *s.ran, due*b.N)
}

// storedTasks commits a store holding stored tasks, due of them due at
// height and the rest spread over later heights, as epochs' transitions are.
func storedTasks(tb testing.TB, stored, due int, height int64) bundle {
	s := setup(tb, def("noop"))
	var batch []types.NewTask
	flush := func() {
		_, err := s.k.Schedule(s.ctx, batch...)
		require.NoError(tb, err)
		batch = batch[:0]
	}
	for i := range stored - due {
		batch = append(batch, types.NewTask{Type: "noop", DueHeight: height + 1 + int64(i%5000)})
		if len(batch) == 1000 {
			flush()
		}
	}
	for range due {
		batch = append(batch, types.NewTask{Type: "noop", DueHeight: height})
	}
	flush()
	s.tctx.CMS.Commit()
	return s
}

// The same property, measured in gas rather than time so that it holds on a
// loaded machine: the store reads and writes of a block do not depend on how
// many tasks wait for later blocks.
func TestRunDueCostFollowsDueTasksNotStored(t *testing.T) {
	t.Parallel()
	const height = 1_000
	gas := func(stored int) storetypes.Gas {
		s := storedTasks(t, stored, 10, height)
		meter := storetypes.NewInfiniteGasMeter()
		ctx := sdk.NewContext(s.tctx.CMS.CacheMultiStore(), cmtproto.Header{Height: height}, false, log.NewNopLogger()).WithGasMeter(meter)
		require.NoError(t, s.k.RunDue(ctx))
		require.Len(t, *s.ran, 10)
		return meter.GasConsumed()
	}
	few, many := gas(100), gas(10_000)
	t.Logf("gas for 10 due tasks: %d among 100 stored, %d among 10,000", few, many)
	require.LessOrEqual(t, float64(many), 1.05*float64(few))
}
