package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMain lets the test binary stand in for devshard where a command
// under test starts itself as a child (os.Executable): run as
// `<test binary> executor ...`, it is `devshard executor ...`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "executor" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

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
