package host

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

func TestConfigLayers(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "host.toml")
	require.NoError(t, os.WriteFile(path, []byte(`
listen = "127.0.0.1:9000"
[storage]
keep_epochs = 5
[executor]
kind = "openai"
url = "http://127.0.0.1:8000"
models = ["llama"]
`), 0o600))
	c, err := LoadConfig(path, env(map[string]string{"DEVSHARD_HOST_KEEP_EPOCHS": "7"}), map[string]string{"listen": "127.0.0.1:9001"})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9001", c.Listen, "flags override the file")
	require.Equal(t, 7, c.Storage.KeepEpochs, "the environment overrides the file")
	require.Equal(t, []string{"llama"}, c.Executor.Models)
	require.Equal(t, uint64(500), c.Storage.SnapshotEvery, "defaults fill the rest")
	require.Equal(t, "/x/data", (&FileConfig{Home: "/x"}).Path("data"))

	c, err = LoadConfig("", env(map[string]string{"PGHOST": "127.0.0.1"}), nil)
	require.NoError(t, err)
	require.Equal(t, "postgres", c.Storage.Driver, "PGHOST selects Postgres")
}

func TestConfigRejects(t *testing.T) {
	t.Parallel()
	cases := map[string]map[string]string{
		`listen "nope" is not host:port`:                                 {"listen": "nope"},
		`storage.driver must be sqlite, postgres or hybrid, got "mysql"`: {"storage.driver": "mysql"},
		`storage.synchronous must be FULL or NORMAL, got "OFF"`:          {"storage.synchronous": "OFF"},
		"storage.keep_epochs must be at least 1, got 0":                  {"storage.keep_epochs": "0"},
		`"x" is not a whole number`:                                      {"recovery.workers": "x"},
		"executor.kind openai needs executor.url and executor.models":    {"executor.kind": "openai"},
		`unknown setting "bogus"`:                                        {"bogus": "1"},
		"storage.prune_catch_up must be a positive duration":             {"storage.prune_catch_up": "soon"},
	}
	for want, overrides := range cases {
		_, err := LoadConfig("", env(nil), overrides)
		require.ErrorContains(t, err, want)
	}
	path := filepath.Join(t.TempDir(), "bad.toml")
	require.NoError(t, os.WriteFile(path, []byte("listne = \"x\"\n"), 0o600))
	_, err := LoadConfig(path, env(nil), nil)
	require.ErrorContains(t, err, "listne")
}

// docs/host.md documents every setting with its variable.
func TestDocsListEverySetting(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/host.md")
	require.NoError(t, err)
	for _, s := range Settings {
		require.Contains(t, string(doc), "| `"+s.Key+"` | `"+s.Env+"` |", "docs/host.md misses %s", s.Key)
	}
}
