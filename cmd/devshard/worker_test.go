package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/keys"
	"github.com/devshard/devshard/worker"
)

// worker init writes a config that loads and a key whose account it
// prints; run again, it leaves both as they are.
func TestWorkerInit(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	var out bytes.Buffer
	root := newRootCommand()
	root.SetOut(&out)
	root.SetArgs([]string{"worker", "init", "--home", home, "--host", "http://127.0.0.1:9999"})
	require.NoError(t, root.Execute())
	key, err := keys.LoadFile(filepath.Join(home, "worker.key"))
	require.NoError(t, err)
	require.Contains(t, out.String(), "worker account: "+key.Address().String())
	cfg, err := worker.LoadConfig(filepath.Join(home, workerConfigFile))
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:9999", cfg.Host.URL)
	exe, err := os.Executable()
	require.NoError(t, err)
	require.Equal(t, exe, cfg.Executors[0].Bin, "the built-in executor is this binary")

	out.Reset()
	root = newRootCommand()
	root.SetOut(&out)
	root.SetArgs([]string{"worker", "init", "--home", home})
	require.NoError(t, root.Execute())
	require.Contains(t, out.String(), "exists; left as it is")
	again, err := keys.LoadFile(filepath.Join(home, "worker.key"))
	require.NoError(t, err)
	require.Equal(t, key.Address(), again.Address(), "the key is kept")
}

// A worker whose config is missing says how to write one.
func TestWorkerWithoutConfig(t *testing.T) {
	t.Parallel()
	root := newRootCommand()
	root.SetArgs([]string{"worker", "--config", filepath.Join(t.TempDir(), "none.toml")})
	err := root.Execute()
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), "devshard worker init"), err.Error())
}
