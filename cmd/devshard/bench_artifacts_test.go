package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// The command runs end to end at a tiny size and prints every figure and
// both ratios.
func TestBenchArtifacts(t *testing.T) {
	t.Parallel()
	var out, progress bytes.Buffer
	cmd := newBenchCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&progress)
	cmd.SetArgs([]string{"artifacts", "--rounds", "1", "--mib", "2", "--loads", "2"})
	require.NoError(t, cmd.Execute(), progress.String())

	for _, line := range []string{
		`BENCH job_prepare_first [0-9.]+ ms`,
		`BENCH job_cached [0-9.]+ ms`,
		`BENCH checksum_per_load [0-9]+ us/MiB`,
		`BENCH sha256_in_memory [0-9]+ us/MiB`,
		`RATIO job_cached/job_prepare_first [0-9.]+ \(target none\)`,
		`RATIO checksum_per_load/sha256_in_memory [0-9.]+ \(target <= 1\.50\) (MEETS|MISSES)`,
	} {
		require.Regexp(t, `(?m)^`+line+`$`, out.String())
	}
	require.Contains(t, progress.String(), "round 1/1: prepare first ")
}

func TestBenchArtifactsRefusesEmptySizes(t *testing.T) {
	t.Parallel()
	cmd := newBenchCommand()
	cmd.SetArgs([]string{"artifacts", "--mib", "0"})
	require.EqualError(t, cmd.Execute(), "--rounds, --mib and --loads must be at least 1, got 3, 0 and 5")
}
