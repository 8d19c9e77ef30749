package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// The command runs end to end at tiny sizes (hosts with SQLite queues,
// workers with real executor children: this test binary, through
// TestMain) and prints every figure and the ratio.
func TestBenchWorkers(t *testing.T) {
	t.Parallel()
	var out, progress bytes.Buffer
	cmd := newBenchCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&progress)
	cmd.SetArgs([]string{"workers", "--rounds", "1", "--samples", "3", "--jobs", "10"})
	require.NoError(t, cmd.Execute(), progress.String())

	for _, line := range []string{
		`BENCH inference_in_process_p50 [0-9.]+ ms`,
		`BENCH inference_in_process_p99 [0-9.]+ ms`,
		`BENCH inference_worker_p50 [0-9.]+ ms`,
		`BENCH inference_worker_p99 [0-9.]+ ms`,
		`BENCH inference_added_p50 -?[0-9.]+ ms`,
		`BENCH inference_added_p99 -?[0-9.]+ ms`,
		`BENCH inference_worker_normal_p50 [0-9.]+ ms`,
		`BENCH inference_worker_normal_p99 [0-9.]+ ms`,
		`BENCH validation_jobs [0-9]+ jobs/s`,
		`RATIO inference_added_p50/1ms -?[0-9.]+ \(target <= 1\.00\) (MEETS|MISSES)`,
	} {
		require.Regexp(t, `(?m)^`+line+`$`, out.String())
	}
	require.Contains(t, progress.String(), "round 1/1: p50 in process ")
}

func TestBenchWorkersRefusesEmptySizes(t *testing.T) {
	t.Parallel()
	cmd := newBenchCommand()
	cmd.SetArgs([]string{"workers", "--jobs", "0"})
	require.EqualError(t, cmd.Execute(), "--rounds, --samples and --jobs must be at least 1, got 3, 200 and 0")
}
