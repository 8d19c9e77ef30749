package keeper_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/x/scheduler/schedulerbench"
)

// The scheduler's per-block cost must follow the number of tasks due, not the
// number stored: 10 due among 100,000 stored should cost within 1.5x of 10 due
// among 100. Compare the two (or run `devshard bench scheduler`, which
// measures the same workloads, x/scheduler/schedulerbench):
//
//	go test -run '^$' -bench BenchmarkSchedulerDue ./x/scheduler/keeper/
func BenchmarkSchedulerDue10Of100(b *testing.B)    { benchmarkDue(b, 100) }
func BenchmarkSchedulerDue10Of100000(b *testing.B) { benchmarkDue(b, 100_000) }

func benchmarkDue(b *testing.B, stored int) {
	w, err := schedulerbench.NewDueWorkload(stored, 10)
	require.NoError(b, err)
	w.Run(b)
}

// The same property, measured in gas rather than time so that it holds on a
// loaded machine: the store reads and writes of a block do not depend on how
// many tasks wait for later blocks.
func TestRunDueCostFollowsDueTasksNotStored(t *testing.T) {
	t.Parallel()
	gas := func(stored int) uint64 {
		w, err := schedulerbench.NewDueWorkload(stored, 10)
		require.NoError(t, err)
		return w.GasPerRun()
	}
	few, many := gas(100), gas(10_000)
	t.Logf("gas for 10 due tasks: %d among 100 stored, %d among 10,000", few, many)
	require.LessOrEqual(t, float64(many), 1.05*float64(few))
}
