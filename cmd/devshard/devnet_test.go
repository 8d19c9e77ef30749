package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
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

// --versiond is off by default, says what it does, and is refused with
// --workers before anything starts: a version's host runs its jobs itself.
func TestDevnetVersiondFlag(t *testing.T) {
	t.Parallel()
	flag := newDevnetCommand().Flags().Lookup("versiond")
	require.NotNil(t, flag)
	require.Equal(t, "false", flag.DefValue)
	require.Contains(t, flag.Usage, "devshard versiond")

	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"devnet", "--home", t.TempDir(), "--versiond", "--workers", "1"})
	require.ErrorContains(t, cmd.Execute(), "drop --workers, or drop --versiond")
	require.NotContains(t, out.String(), "devnet: starting")
}
