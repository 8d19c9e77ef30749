package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/devnet"
)

// A storage the devnet does not run is refused when the flags are read,
// before anything starts, with the names it does run.
func TestDevnetRefusesAnUnknownStorage(t *testing.T) {
	t.Parallel()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"devnet", "--home", t.TempDir(), "--storage", "mysql"})
	err := cmd.Execute()
	require.EqualError(t, err, `invalid argument "mysql" for "--storage" flag: the devnet's storage must be sqlite, postgres or hybrid, got "mysql"`)
	require.NotContains(t, out.String(), "devnet: starting")

	flag := newDevnetCommand().Flags().Lookup("storage")
	require.Equal(t, "sqlite", flag.DefValue)
}

// --versiond is on by default, says what it does, and given explicitly
// with --workers is refused before anything starts: a version's host runs
// its jobs itself.
func TestDevnetVersiondFlag(t *testing.T) {
	t.Parallel()
	flag := newDevnetCommand().Flags().Lookup("versiond")
	require.NotNil(t, flag)
	require.Equal(t, "true", flag.DefValue)
	require.Contains(t, flag.Usage, "devshard versiond")

	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"devnet", "--home", t.TempDir(), "--versiond", "--workers", "1"})
	require.ErrorContains(t, cmd.Execute(), "drop --workers, or drop --versiond")
	require.NotContains(t, out.String(), "devnet: starting")
}

// Without --versiond, the hosts run through versiond unless --workers,
// a shared storage or a home made without it needs them run directly.
func TestDevnetVersiondDefault(t *testing.T) {
	t.Parallel()
	fresh := t.TempDir()
	on, why, err := defaultVersiond(fresh, devnet.StorageSQLite, 0)
	require.NoError(t, err)
	require.True(t, on, "a new network on sqlite runs through versiond")
	require.Empty(t, why)

	on, why, err = defaultVersiond(fresh, devnet.StorageSQLite, 2)
	require.NoError(t, err)
	require.False(t, on)
	require.Contains(t, why, "--workers")

	on, why, err = defaultVersiond(fresh, devnet.StorageHybrid, 0)
	require.NoError(t, err)
	require.False(t, on)
	require.Contains(t, why, "--storage hybrid")

	direct := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(direct, "setup.json"), []byte(`{"hosts":[]}`), 0o600))
	on, why, err = defaultVersiond(direct, devnet.StorageSQLite, 0)
	require.NoError(t, err)
	require.False(t, on, "a home made without versiond keeps its mode")
	require.Contains(t, why, "made without it")

	made := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(made, "setup.json"), []byte(`{"hosts":[],"versiond":{"binaries_listen":"127.0.0.1:1"}}`), 0o600))
	on, _, err = defaultVersiond(made, devnet.StorageSQLite, 2)
	require.NoError(t, err)
	require.True(t, on, "a home made with versiond keeps it; --workers is then refused by the devnet with a sentence")
}
