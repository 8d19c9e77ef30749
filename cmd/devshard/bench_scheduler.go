package main

import (
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/x/scheduler/schedulerbench"
)

func newBenchSchedulerCommand() *cobra.Command {
	var rounds int
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Scheduler: per-block cost of 10 due tasks among 100 against among 100,000 stored",
		Long: `scheduler measures one block's RunDue (the scheduler's EndBlock) with 10
tasks due among 100 stored and among 100,000 stored, the rest due at later
heights, each block starting from the committed state. It also prints the gas
one RunDue consumes in each, which does not depend on the machine's load.
'go test -run '^$' -bench BenchmarkSchedulerDue ./x/scheduler/keeper/' measures
the same workloads (x/scheduler/schedulerbench).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 {
				return fmt.Errorf("--rounds must be at least 1, got %d", rounds)
			}
			return benchScheduler(cmd.OutOrStdout(), cmd.ErrOrStderr(), rounds)
		},
	}
	cmd.Flags().IntVar(&rounds, "rounds", 3, "measure each figure this many times, interleaved, and keep the median")
	return cmd
}

func benchScheduler(out, progress io.Writer, rounds int) error {
	const due = 10
	fmt.Fprintln(progress, "preparing workloads (10 due tasks among 100, then among 100,000 stored)...")
	few, err := schedulerbench.NewDueWorkload(100, due)
	if err != nil {
		return err
	}
	many, err := schedulerbench.NewDueWorkload(100_000, due)
	if err != nil {
		return err
	}
	figures := []struct {
		run func(*testing.B)
		ns  []float64
	}{
		{run: few.Run},
		{run: many.Run},
	}
	// Interleave the figures so slow phases of a noisy machine hit both alike.
	for r := range rounds {
		fmt.Fprintf(progress, "round %d/%d\n", r+1, rounds)
		for i := range figures {
			res := testing.Benchmark(figures[i].run)
			if res.N == 0 {
				return fmt.Errorf("scheduler benchmark %d failed", i)
			}
			figures[i].ns = append(figures[i].ns, float64(res.NsPerOp()))
		}
	}
	median := func(i int) float64 {
		v := slices.Clone(figures[i].ns)
		slices.Sort(v)
		return v[len(v)/2]
	}
	ns100, ns100k := median(0), median(1)

	fmt.Fprintf(out, "BENCH run_due_10_of_100 %.1f us/block\n", ns100/1e3)
	fmt.Fprintf(out, "BENCH run_due_10_of_100000 %.1f us/block\n", ns100k/1e3)
	fmt.Fprintf(out, "BENCH run_due_gas_10_of_100 %d gas/block\n", few.GasPerRun())
	fmt.Fprintf(out, "BENCH run_due_gas_10_of_100000 %d gas/block\n", many.GasPerRun())
	ratio(out, "run_due_100k/run_due_100", ns100k/ns100, "<=", 1.5)
	return nil
}
