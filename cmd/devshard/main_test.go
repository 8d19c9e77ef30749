package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// With DEVSHARD_CPUPROFILE_DIR set, a process writes its CPU profile there,
// named for its subcommand and pid; without it, nothing is written.
func TestProfileFromEnv(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "prof")
	t.Setenv(profileEnv, "")
	stop, err := profileFromEnv([]string{"host"})
	require.NoError(t, err)
	stop()
	require.NoDirExists(t, dir)

	t.Setenv(profileEnv, dir)
	stop, err = profileFromEnv([]string{"host", "--home", "x"})
	require.NoError(t, err)
	stop()
	info, err := os.Stat(filepath.Join(dir, fmt.Sprintf("host-%d.prof", os.Getpid())))
	require.NoError(t, err)
	require.Positive(t, info.Size(), "a pprof file has at least its header")
}
