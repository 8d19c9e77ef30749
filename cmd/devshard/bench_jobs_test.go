package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The command runs end to end at tiny sizes (a throwaway Postgres cluster,
// River beside our queue, SQLite, the three wake-up paths) and prints every
// figure and the ratio.
func TestBenchJobs(t *testing.T) {
	t.Parallel()
	var out, progress bytes.Buffer
	cmd := newBenchCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&progress)
	cmd.SetArgs([]string{"jobs", "--rounds", "1", "--jobs", "20", "--workers", "2", "--samples", "3"})
	require.NoError(t, cmd.Execute(), progress.String())

	for _, line := range []string{
		`BENCH postgres_ours [0-9]+ jobs/s`,
		`BENCH postgres_ours_pool [0-9]+ jobs/s`,
		`BENCH postgres_river [0-9]+ jobs/s`,
		`BENCH river_last_batch_wait [0-9.]+ ms`,
		`BENCH sqlite_ours [0-9]+ jobs/s`,
		`BENCH wake_sqlite_p50 [0-9.]+ ms`,
		`BENCH wake_sqlite_p99 [0-9.]+ ms`,
		`BENCH wake_postgres_p50 [0-9.]+ ms`,
		`BENCH wake_postgres_p99 [0-9.]+ ms`,
		`BENCH wake_postgres_notify_p50 [0-9.]+ ms`,
		`BENCH wake_postgres_notify_p99 [0-9.]+ ms`,
		`RATIO postgres_ours/river [0-9.]+ \(target none\)`,
		`RATIO postgres_ours_pool/river [0-9.]+ \(target >= 1\.00\) (MEETS|MISSES)`,
	} {
		require.Regexp(t, `(?m)^`+line+`$`, out.String())
	}
	require.Contains(t, progress.String(), "round 1/1: postgres ours ")
}

func TestBenchJobsRefusesEmptySizes(t *testing.T) {
	t.Parallel()
	cmd := newBenchCommand()
	cmd.SetArgs([]string{"jobs", "--workers", "0"})
	require.EqualError(t, cmd.Execute(), "--rounds, --jobs, --workers and --samples must be at least 1, got 3, 3000, 0 and 200")
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	millis := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"one sample is every percentile", millis(7), 0.99, 7 * time.Millisecond},
		{"p50 of four is the second", millis(1, 2, 3, 4), 0.50, 2 * time.Millisecond},
		{"p99 of 100 is the 99th", millis(hundred...), 0.99, 99 * time.Millisecond},
		{"p99 of 3 is the largest", millis(1, 2, 3), 0.99, 3 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, percentile(tc.sorted, tc.p))
		})
	}
}
