package settings

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

// conf is a daemon's configuration with one setting of every kind.
type conf struct {
	Listen  string
	Keep    int
	Every   uint64
	Think   time.Duration
	Verbose bool
	Models  []string
	Secret  string
}

type bundle struct {
	c     *conf
	s     *Schema
	fs    *pflag.FlagSet
	warns *bytes.Buffer
}

func setup(t *testing.T) bundle {
	t.Helper()
	c := &conf{}
	s := New("worker")
	s.String(&c.Listen, "listen", "127.0.0.1:1", "address").FormerEnv("DEVSHARD_WORKER_ADDR")
	s.Int(&c.Keep, "storage.keep_epochs", 3, "epochs kept").FormerFlag("storage.keep-epochs").FormerKey("storage.kept")
	s.Uint(&c.Every, "storage.snapshot_every", 500, "a snapshot every K | nonces")
	s.Duration(&c.Think, "executor.think_time", 20*time.Millisecond, "pause per token")
	s.Bool(&c.Verbose, "verbose", false, "log more")
	s.List(&c.Models, "executor.models", []string{"a", "b"}, "models served")
	s.String(&c.Secret, "api_key", "", "the key").EnvOnly()
	fs := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	warns := &bytes.Buffer{}
	fs.SetOutput(warns)
	s.AddFlags(fs)
	return bundle{c: c, s: s, fs: fs, warns: warns}
}

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	return path
}

func TestNamesFollowOneRule(t *testing.T) {
	t.Parallel()
	b := setup(t)
	got := map[string][2]string{}
	for _, st := range b.s.Settings() {
		got[st.Key] = [2]string{st.Flag(), st.Env()}
	}
	require.Equal(t, map[string][2]string{
		"listen":                 {"listen", "DEVSHARD_WORKER_LISTEN"},
		"storage.keep_epochs":    {"storage-keep-epochs", "DEVSHARD_WORKER_STORAGE_KEEP_EPOCHS"},
		"storage.snapshot_every": {"storage-snapshot-every", "DEVSHARD_WORKER_STORAGE_SNAPSHOT_EVERY"},
		"executor.think_time":    {"executor-think-time", "DEVSHARD_WORKER_EXECUTOR_THINK_TIME"},
		"verbose":                {"verbose", "DEVSHARD_WORKER_VERBOSE"},
		"executor.models":        {"executor-models", "DEVSHARD_WORKER_EXECUTOR_MODELS"},
		"api_key":                {"", "DEVSHARD_WORKER_API_KEY"},
	}, got)
	require.Nil(t, b.fs.Lookup("api-key"), "an environment-only setting has no flag")
	st, ok := b.s.Lookup("storage.keep_epochs")
	require.True(t, ok)
	require.Equal(t, "storage-keep-epochs", st.Flag())
	_, ok = b.s.Lookup("storage.keep-epochs")
	require.False(t, ok, "a flag name is not a key")
	require.Equal(t, "int", b.fs.Lookup("storage-keep-epochs").Value.Type(), "flags are typed")
}

func TestHelpKeepsTheDeclaredOrder(t *testing.T) {
	t.Parallel()
	usage := setup(t).fs.FlagUsages()
	last := -1
	for _, name := range []string{"--listen", "--storage-keep-epochs", "--storage-snapshot-every", "--executor-think-time", "--verbose", "--executor-models"} {
		i := strings.Index(usage, name+" ")
		require.Greater(t, i, last, "%s out of order in\n%s", name, usage)
		last = i
	}
	require.NotContains(t, usage, "storage.keep-epochs", "former names are hidden")
}

func TestDeclarationWritesDefaults(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.Equal(t, conf{Listen: "127.0.0.1:1", Keep: 3, Every: 500, Think: 20 * time.Millisecond, Models: []string{"a", "b"}}, *b.c)
	require.NoError(t, b.s.Load("", env(nil), b.warns))
	require.Equal(t, Default, b.s.Source("storage.keep_epochs"))
}

// Defaults, then the file, then the environment, then the flags, whatever
// order the flags were parsed in.
func TestLayersInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	path := writeFile(t, "worker.toml", `
listen = "file:1"
verbose = true
[storage]
keep_epochs = 5
snapshot_every = 9
[executor]
think_time = "1s"
models = ["m"]
`)
	require.NoError(t, b.fs.Parse([]string{"--listen", "flag:1", "--executor-models", "x,y", "--executor-models", "z"}))
	require.NoError(t, b.s.Load(path, env(map[string]string{
		"DEVSHARD_WORKER_LISTEN":              "env:1",
		"DEVSHARD_WORKER_STORAGE_KEEP_EPOCHS": "7",
		"DEVSHARD_WORKER_API_KEY":             "sk",
	}), b.warns))
	require.Equal(t, conf{Listen: "flag:1", Keep: 7, Every: 9, Think: time.Second, Verbose: true, Models: []string{"x", "y", "z"}, Secret: "sk"}, *b.c)
	require.Equal(t, Flag, b.s.Source("listen"))
	require.Equal(t, Env, b.s.Source("storage.keep_epochs"))
	require.Equal(t, File, b.s.Source("storage.snapshot_every"))
	require.Empty(t, b.warns.String())
}

func TestBoolFlagAloneIsTrue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, b.fs.Parse([]string{"--verbose"}))
	require.NoError(t, b.s.Load("", env(nil), b.warns))
	require.True(t, b.c.Verbose)
}

// Former names still work, and say once what replaced them.
func TestFormerNamesWarn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, b.fs.Parse([]string{"--storage.keep-epochs", "8"}))
	require.NoError(t, b.s.Load("", env(map[string]string{"DEVSHARD_WORKER_ADDR": "old:1"}), b.warns))
	require.Equal(t, 8, b.c.Keep)
	require.Equal(t, "old:1", b.c.Listen)
	require.Equal(t, "Flag --storage.keep-epochs has been deprecated, use --storage-keep-epochs\n"+
		"Environment variable DEVSHARD_WORKER_ADDR has been deprecated, use DEVSHARD_WORKER_LISTEN\n", b.warns.String())
	require.True(t, b.fs.Lookup("storage.keep-epochs").Hidden)

	b = setup(t)
	require.NoError(t, b.s.Load("", env(map[string]string{"DEVSHARD_WORKER_ADDR": "old:1", "DEVSHARD_WORKER_LISTEN": "new:1"}), b.warns))
	require.Equal(t, "new:1", b.c.Listen, "the current name wins")
	require.Empty(t, b.warns.String())
}

func TestFormerFileKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	path := writeFile(t, "worker.toml", "[storage]\nkept = 4\n")
	require.NoError(t, b.s.Load(path, env(nil), b.warns))
	require.Equal(t, 4, b.c.Keep)
	require.Equal(t, "Config "+path+": key storage.kept has been deprecated, use storage.keep_epochs\n", b.warns.String())

	b = setup(t)
	path = writeFile(t, "worker.toml", "[storage]\nkeep_epochs = 6\nkept = 4\n")
	require.NoError(t, b.s.Load(path, env(nil), b.warns))
	require.Equal(t, 6, b.c.Keep, "the current key wins")
}

// A bad value names the setting, where it came from and what it should be.
func TestBadValuesSayWhereAndWhat(t *testing.T) {
	t.Parallel()
	b := setup(t)
	err := b.fs.Parse([]string{"--storage-snapshot-every", "-1"})
	require.EqualError(t, err, `invalid argument "-1" for "--storage-snapshot-every" flag: expected a whole number, 0 or more`)

	err = setup(t).s.Load("", env(map[string]string{"DEVSHARD_WORKER_EXECUTOR_THINK_TIME": "soon"}), &bytes.Buffer{})
	require.EqualError(t, err, `executor.think_time from DEVSHARD_WORKER_EXECUTOR_THINK_TIME: expected a duration such as 30s or 20ms, got "soon"`)
	var verr *ValueError
	require.ErrorAs(t, err, &verr)

	for body, want := range map[string]string{
		"[storage]\nkeep_epochs = \"3\"\n": `storage.keep_epochs from %s: expected a whole number, got "3"`,
		"[executor]\nmodels = \"m\"\n":     `executor.models from %s: expected a list of text (comma-separated, or a TOML array in the file), got "m"`,
		"verbose = 1\n":                    `verbose from %s: expected true or false, got 1`,
		"[storage]\nsnapshot_every = -2\n": `storage.snapshot_every from %s: expected a whole number, 0 or more, got -2`,
	} {
		path := writeFile(t, "worker.toml", body)
		require.EqualError(t, setup(t).s.Load(path, env(nil), &bytes.Buffer{}), strings.ReplaceAll(want, "%s", path))
	}
}

func TestFileRefusesUnknownAndSecretKeys(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "worker.toml", "listne = \"x\"\n[storage]\nkeep = 1\n")
	require.EqualError(t, setup(t).s.Load(path, env(nil), &bytes.Buffer{}), "config "+path+" has unknown settings: listne, storage.keep")

	path = writeFile(t, "worker.toml", "api_key = \"sk\"\n")
	require.EqualError(t, setup(t).s.Load(path, env(nil), &bytes.Buffer{}),
		"config "+path+": api_key is taken from the environment only (DEVSHARD_WORKER_API_KEY), never from a file")
}

// The file is --config, else <home>/<daemon>.toml when it exists.
func TestFileLocation(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	c := &conf{}
	s := New("worker")
	s.String(&c.Listen, "home", "/nonexistent", "home")
	fs := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	s.AddFlags(fs)
	require.Empty(t, s.File(env(map[string]string{"DEVSHARD_WORKER_HOME": home})), "no file there")
	require.NoError(t, os.WriteFile(filepath.Join(home, "worker.toml"), nil, 0o600))
	require.Equal(t, filepath.Join(home, "worker.toml"), s.File(env(map[string]string{"DEVSHARD_WORKER_HOME": home})))
	require.NoError(t, fs.Parse([]string{"--home", home}))
	require.Equal(t, filepath.Join(home, "worker.toml"), s.File(env(nil)), "the flag names the home too")
	require.NoError(t, fs.Parse([]string{"--config", "/etc/w.toml"}))
	require.Equal(t, "/etc/w.toml", s.File(env(nil)))
}

func TestDeclaringANameTwicePanics(t *testing.T) {
	t.Parallel()
	var a, b string
	s := New("worker")
	s.String(&a, "chain.id", "", "")
	require.Panics(t, func() { s.String(&b, "chain.id", "", "") })
	require.Panics(t, func() { s.String(&b, "chain_id", "", "") }, "two keys, one variable")
}

func TestTable(t *testing.T) {
	t.Parallel()
	require.Equal(t, `| key | flag | environment | type | default | meaning |
| --- | --- | --- | --- | --- | --- |
| `+"`listen` | `--listen` | `DEVSHARD_WORKER_LISTEN` | string | `127.0.0.1:1` | address |"+`
| `+"`storage.keep_epochs` | `--storage-keep-epochs` | `DEVSHARD_WORKER_STORAGE_KEEP_EPOCHS` | int | `3` | epochs kept |"+`
| `+"`storage.snapshot_every` | `--storage-snapshot-every` | `DEVSHARD_WORKER_STORAGE_SNAPSHOT_EVERY` | uint | `500` | a snapshot every K \\| nonces |"+`
| `+"`executor.think_time` | `--executor-think-time` | `DEVSHARD_WORKER_EXECUTOR_THINK_TIME` | duration | `20ms` | pause per token |"+`
| `+"`verbose` | `--verbose` | `DEVSHARD_WORKER_VERBOSE` | bool | `false` | log more |"+`
| `+"`executor.models` | `--executor-models` | `DEVSHARD_WORKER_EXECUTOR_MODELS` | list | `a,b` | models served |"+`
| none | none | `+"`DEVSHARD_WORKER_API_KEY`"+` | string | none | the key |
`, setup(t).s.Table())
}
