package host

import (
	"time"

	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/settings/settingstest"
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
	c, err := LoadConfig(path, env(map[string]string{"DEVSHARD_HOST_STORAGE_KEEP_EPOCHS": "7"}), map[string]string{"listen": "127.0.0.1:9001"})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9001", c.Listen, "flags override the file")
	require.Equal(t, 7, c.Storage.KeepEpochs, "the environment overrides the file")
	require.Equal(t, []string{"llama"}, c.Executor.Models)
	require.Equal(t, uint64(500), c.Storage.SnapshotEvery, "defaults fill the rest")
	require.Equal(t, "/x/data", (&FileConfig{Home: "/x"}).Path("data"))

	c, err = LoadConfig("", env(map[string]string{"PGHOST": "127.0.0.1"}), nil)
	require.NoError(t, err)
	require.Equal(t, "postgres", c.Storage.Driver, "PGHOST selects Postgres")
	for _, named := range []map[string]string{{"DEVSHARD_HOST_STORAGE_DRIVER": "sqlite"}, {"DEVSHARD_HOST_STORAGE": "sqlite"}} {
		named["PGHOST"] = "127.0.0.1"
		c, err = LoadConfig("", env(named), nil)
		require.NoError(t, err)
		require.Equal(t, "sqlite", c.Storage.Driver, "a driver named in the environment wins over PGHOST")
	}
	c, err = LoadConfig("", env(map[string]string{"PGHOST": "127.0.0.1"}), map[string]string{"storage.driver": "sqlite"})
	require.NoError(t, err)
	require.Equal(t, "sqlite", c.Storage.Driver, "a driver named by a flag wins over PGHOST")
}

func TestConfigRejects(t *testing.T) {
	t.Parallel()
	cases := map[string]map[string]string{
		`listen "nope" is not host:port`:                                              {"listen": "nope"},
		`storage.driver must be sqlite, postgres or hybrid, got "mysql"`:              {"storage.driver": "mysql"},
		`storage.synchronous must be FULL or NORMAL, got "OFF"`:                       {"storage.synchronous": "OFF"},
		"storage.keep_epochs must be at least 1, got 0":                               {"storage.keep_epochs": "0"},
		`invalid argument "x" for "--recovery-workers" flag: expected a whole number`: {"recovery.workers": "x"},
		"executor.kind openai needs executor.url and executor.models":                 {"executor.kind": "openai"},
		`unknown setting "bogus"`:                                                     {"bogus": "1"},
		`"--storage-prune-catch-up" flag: expected a duration such as 30s`:            {"storage.prune_catch_up": "soon"},
		"storage.prune_catch_up must be a positive duration":                          {"storage.prune_catch_up": "0s"},
		"executor.think_time must be a duration such as 20ms":                         {"executor.think_time": "-1s"},
		`chain.grpc: gRPC endpoint 2 of 2, "b", is malformed: it is not host:port`:    {"chain.grpc": "a:9090,b"},
		`chain.rpc: CometBFT RPC endpoint "a:26657" is malformed`:                     {"chain.rpc": "a:26657"},
		"chain.stall_after must be a positive duration such as 30s, got 0s":           {"chain.stall_after": "0s"},
		"jobs.heartbeat_timeout must be a positive duration":                          {"jobs.heartbeat_timeout": "0s"},
		"jobs.max_try must be at least 1, got 0":                                      {"jobs.max_try": "0"},
		"jobs.lifetime must be a positive duration":                                   {"jobs.lifetime": "0s"},
		`admin.listen "nope" is not host:port (or empty for no admin endpoint)`:       {"admin.listen": "nope"},
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

// Scripts written before issue 16 keep working: the dotted flags and the
// old variable names still set their settings, each with a one-line notice.
func TestFormerHostNames(t *testing.T) {
	t.Parallel()
	fs := pflag.NewFlagSet("host", pflag.ContinueOnError)
	var notices bytes.Buffer
	fs.SetOutput(&notices)
	load := ConfigFlags(fs)
	require.NoError(t, fs.Parse([]string{"--home", t.TempDir(), "--chain.grpc", "10.0.0.1:9090", "--executor.think-time", "5ms", "--storage.synchronous", "NORMAL", "--key.keyring-backend", "test"}))
	c, err := load(env(map[string]string{"DEVSHARD_HOST_KEEP_EPOCHS": "9", "DEVSHARD_HOST_ACCOUNT": "devshard1x"}), &notices)
	require.NoError(t, err)
	require.Equal(t, "10.0.0.1:9090", c.Chain.GRPC)
	require.Equal(t, 5*time.Millisecond, c.Executor.ThinkTime)
	require.Equal(t, "NORMAL", c.Storage.Synchronous)
	require.Equal(t, 9, c.Storage.KeepEpochs)
	require.Equal(t, "devshard1x", c.Key.Account)
	require.Equal(t, "test", c.Key.KeyringBackend)
	require.Equal(t, `Flag --chain.grpc has been deprecated, use --chain-grpc
Flag --executor.think-time has been deprecated, use --executor-think-time
Flag --storage.synchronous has been deprecated, use --storage-synchronous
Flag --key.keyring-backend has been deprecated, use --keyring-backend
Environment variable DEVSHARD_HOST_ACCOUNT has been deprecated, use DEVSHARD_HOST_KEY_ACCOUNT
Environment variable DEVSHARD_HOST_KEEP_EPOCHS has been deprecated, use DEVSHARD_HOST_STORAGE_KEEP_EPOCHS
`, notices.String())
}

// A host.toml written before issue 16, with the keyring in [key], still
// loads.
func TestFormerHostFileKeys(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "host.toml")
	require.NoError(t, os.WriteFile(path, []byte("[key]\nkeyring_backend = \"test\"\nkeyring_dir = \"/k\"\nkey_name = \"warm\"\n"), 0o600))
	c, err := LoadConfig(path, env(nil), nil)
	require.NoError(t, err)
	require.Equal(t, "test", c.Key.KeyringBackend)
	require.Equal(t, "/k", c.Key.KeyringDir)
	require.Equal(t, "warm", c.Key.KeyName)
}

// Without --config the host reads <home>/host.toml when it exists.
func TestConfigFileInHome(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(home, "host.toml"), []byte("[recovery]\nworkers = 2\n"), 0o600))
	fs := pflag.NewFlagSet("host", pflag.ContinueOnError)
	load := ConfigFlags(fs)
	require.NoError(t, fs.Parse([]string{"--home", home}))
	c, err := load(env(nil), &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 2, c.Recovery.Workers)
}

// docs/host.md shows the settings table the declarations render, so the
// page cannot drift from the flags.
func TestDocsShowTheSettingsTable(t *testing.T) {
	t.Parallel()
	settingstest.RequireDocTable(t, "../docs/host.md", Settings(&FileConfig{}))
}

// The example host.toml in docs/host.md loads.
func TestDocsExampleLoads(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/host.md")
	require.NoError(t, err)
	_, example, ok := strings.Cut(string(doc), "```toml\n")
	require.True(t, ok, "docs/host.md has no TOML example")
	example, _, _ = strings.Cut(example, "```")
	path := filepath.Join(t.TempDir(), "host.toml")
	require.NoError(t, os.WriteFile(path, []byte(example), 0o600))
	c, err := LoadConfig(path, env(nil), nil)
	require.NoError(t, err)
	require.Equal(t, "file", c.Key.KeyringBackend)
}

// versiond names each child's version in DEVSHARD_VERSION; the host takes
// it as its runtime version, and refuses a runtime_version that disagrees,
// which would refuse every session versiond routes to it.
func TestRuntimeVersionFromVersiond(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig("", env(nil), nil)
	require.NoError(t, err)
	require.Empty(t, c.RuntimeVersion, "not behind versiond: serves every escrow")
	c, err = LoadConfig("", env(map[string]string{"DEVSHARD_VERSION": "v2"}), nil)
	require.NoError(t, err)
	require.Equal(t, "v2", c.RuntimeVersion)
	c, err = LoadConfig("", env(map[string]string{"DEVSHARD_HOST_RUNTIME_VERSION": "v3"}), nil)
	require.NoError(t, err)
	require.Equal(t, "v3", c.RuntimeVersion)
	c, err = LoadConfig("", env(map[string]string{"DEVSHARD_VERSION": "v2"}), map[string]string{"runtime_version": "v2"})
	require.NoError(t, err)
	require.Equal(t, "v2", c.RuntimeVersion)
	_, err = LoadConfig("", env(map[string]string{"DEVSHARD_VERSION": "v2"}), map[string]string{"runtime_version": "v1"})
	require.EqualError(t, err, `runtime_version is "v1" but versiond runs this process as DEVSHARD_VERSION="v2"; leave runtime_version unset behind versiond`)
}
