package cmd

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestNodeRaisesTheGCTargetAndCapsTheHeapWhenTheOperatorSetNothing(t *testing.T) {
	t.Parallel()
	p := planGC(envOf(nil), 10<<30)
	require.Equal(t, nodeGCPercent, p.percent)
	require.Equal(t, int64(9<<30), p.memLimit, "90 %% of the 10 GiB the node may use")
	require.Contains(t, p.String(), "GOGC=200, the node's default (GOGC unset)")
	require.Contains(t, p.String(), "9.0 GiB, 90 % of the 10.0 GiB this node may use")
}

func TestOperatorsGOGCAndGOMEMLIMITWin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		env         map[string]string
		wantPercent int
		wantLimit   int64
		wantLog     string
	}{
		{"GOGC set: neither is touched", map[string]string{"GOGC": "100"}, 0, 0, "GOGC=100 from the environment; soft memory limit: none (GOGC set"},
		{"GOGC off: neither is touched", map[string]string{"GOGC": "off"}, 0, 0, "GOGC=off from the environment"},
		{"GOMEMLIMIT set: only the target is raised", map[string]string{"GOMEMLIMIT": "2GiB"}, nodeGCPercent, 0, "soft memory limit: GOMEMLIMIT=2GiB from the environment"},
		{"both set", map[string]string{"GOGC": "50", "GOMEMLIMIT": "1GiB"}, 0, 0, "GOGC=50 from the environment; soft memory limit: GOMEMLIMIT=1GiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planGC(envOf(tc.env), 8<<30)
			require.Equal(t, tc.wantPercent, p.percent)
			require.Equal(t, tc.wantLimit, p.memLimit)
			require.Contains(t, p.String(), tc.wantLog)
		})
	}
}

func TestNoLimitWhenTheMemoryIsUnknown(t *testing.T) {
	t.Parallel()
	p := planGC(envOf(nil), 0)
	require.Equal(t, nodeGCPercent, p.percent)
	require.Zero(t, p.memLimit)
	require.Contains(t, p.String(), "none (the memory available is unknown)")
}

// Not parallel: it changes the process's GC settings, and puts them back.
func TestApplySetsTheProcessGCSettings(t *testing.T) {
	oldPercent := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(math.MaxInt64)
	defer func() {
		debug.SetGCPercent(oldPercent)
		debug.SetMemoryLimit(oldLimit)
	}()
	gcPlan{percent: 250, memLimit: 3 << 30}.apply()
	require.Equal(t, 250, debug.SetGCPercent(100))
	require.Equal(t, int64(3<<30), debug.SetMemoryLimit(math.MaxInt64))

	gcPlan{}.apply() // the operator's settings: nothing changes
	require.Equal(t, 100, debug.SetGCPercent(100))
	require.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1))
}

func TestMemoryAvailableIsTheCgroupLimitWhenLower(t *testing.T) {
	t.Parallel()
	require.Equal(t, uint64(2048<<10), parseMemTotal(strings.NewReader("MemFree: 1 kB\nMemTotal:        2048 kB\n")))
	require.Zero(t, parseMemTotal(strings.NewReader("MemTotal: lots kB\n")))
	require.Zero(t, parseMemTotal(strings.NewReader("")))
	require.Equal(t, uint64(1<<30), parseCgroupLimit("1073741824\n"))
	require.Zero(t, parseCgroupLimit("max\n"), "no cgroup limit")
	require.Zero(t, parseCgroupLimit("-1"))

	dir := t.TempDir()
	meminfo, limit := filepath.Join(dir, "meminfo"), filepath.Join(dir, "memory.max")
	require.NoError(t, os.WriteFile(meminfo, []byte("MemTotal: 4194304 kB\n"), 0o600))
	require.NoError(t, os.WriteFile(limit, []byte("1073741824\n"), 0o600))
	require.Equal(t, uint64(1<<30), memoryOf(meminfo, limit), "a cgroup limit below the RAM")
	require.NoError(t, os.WriteFile(limit, []byte("max\n"), 0o600))
	require.Equal(t, uint64(4<<30), memoryOf(meminfo, limit), "no cgroup limit: the RAM")
	require.Equal(t, uint64(4<<30), memoryOf(meminfo, filepath.Join(dir, "absent")), "no cgroup file: the RAM")
	require.Zero(t, memoryOf(filepath.Join(dir, "absent"), filepath.Join(dir, "absent")), "neither: unknown")
}
