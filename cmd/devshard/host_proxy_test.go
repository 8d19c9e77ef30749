package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// `devshard host --proxy` needs the primary's config directory, reads its
// host.toml, and writes nothing there.
func TestHostProxyFlags(t *testing.T) {
	t.Parallel()
	run := func(args ...string) error {
		root := newRootCommand()
		root.SetArgs(append([]string{"host", "--home", t.TempDir(), "--listen", "127.0.0.1:0"}, args...))
		return root.Execute()
	}
	require.ErrorContains(t, run("--proxy", "http://127.0.0.1:1"), "--proxy and --conf-dir go together")
	require.ErrorContains(t, run("--conf-dir", t.TempDir()), "--proxy and --conf-dir go together")
	empty := t.TempDir()
	require.ErrorContains(t, run("--proxy", "http://127.0.0.1:1", "--conf-dir", empty), "read the primary's configuration in --conf-dir")

	// The primary's file names its account; the proxy, without a key of
	// its own yet, stops there, and the primary's directory is untouched.
	conf := t.TempDir()
	toml := []byte("[key]\naccount = \"" + "0102030405060708090a0b0c0d0e0f1011121314" + "\"\n")
	require.NoError(t, os.WriteFile(filepath.Join(conf, "host.toml"), toml, 0o600))
	require.ErrorContains(t, run("--proxy", "http://127.0.0.1:1", "--conf-dir", conf), "devshard host init")
	entries, err := os.ReadDir(conf)
	require.NoError(t, err)
	require.Len(t, entries, 1, "nothing is written to the primary's config directory")
	got, err := os.ReadFile(filepath.Join(conf, "host.toml"))
	require.NoError(t, err)
	require.Equal(t, toml, got)
}
