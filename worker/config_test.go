package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "worker.toml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	return path
}

// The file `worker init` writes loads as it is, with its defaults.
func TestDefaultConfigLoads(t *testing.T) {
	t.Parallel()
	cfg, err := LoadConfig(writeConfig(t, DefaultConfig("http://127.0.0.1:8081", "/usr/local/bin/devshard")))
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:8081", cfg.Host.URL)
	require.Equal(t, Duration(25*time.Second), cfg.ClaimWait)
	require.Len(t, cfg.Executors, 1)
	x := cfg.Executors[0]
	require.Equal(t, []string{"executor", "builtin"}, x.Args)
	require.True(t, x.Prepare)
	require.Equal(t, 2, x.Concurrent)
	require.Equal(t, Duration(5*time.Second), x.ReadyTimeout)
	require.Equal(t, "artifacts", cfg.Cache.Dir)
}

// A misspelt key, a bad duration, a missing host and an unknown kind are
// refused with a sentence that names them; nothing is silently ignored.
func TestConfigRefusesWhatCannotRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, text, want string }{
		{"misspelt key", "[host]\nurl = \"http://h\"\n[[executor]]\nbin = \"x\"\nconcurent = 2\n", "concurent"},
		{"bad duration", "claim_wait = \"soon\"\n[host]\nurl = \"http://h\"\n[[executor]]\nbin = \"x\"\n", `"soon" is not a duration`},
		{"no host", "[[executor]]\nbin = \"x\"\n", "host.url is required"},
		{"no executor", "[host]\nurl = \"http://h\"\n", "no [[executor]] block"},
		{"unknown kind", "[host]\nurl = \"http://h\"\n[[executor]]\nbin = \"x\"\nkinds = [\"mining\"]\n", `kind "mining" is not one of`},
		{"twice a name", "[host]\nurl = \"http://h\"\n[[executor]]\nname = \"a\"\nbin = \"x\"\n[[executor]]\nname = \"a\"\nbin = \"y\"\n", "two executors have that name"},
		{"sha without source", "[host]\nurl = \"http://h\"\n[[executor]]\nbin = \"x\"\n[[model]]\nname = \"m\"\nsha256 = \"ab\"\n", "sha256 without a source"},
	} {
		_, err := LoadConfig(writeConfig(t, tc.text))
		require.ErrorContains(t, err, tc.want, tc.name)
	}
}

// A bare program name is found in PATH, as a shell finds it; a relative
// path is the config file's neighbour.
func TestExecutorProgram(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "[host]\nurl = \"http://h\"\n[[executor]]\nbin = \"x\"\n")
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	require.Equal(t, "python3", cfg.Program("python3"))
	require.Equal(t, filepath.Join(filepath.Dir(path), "bin", "bridge"), cfg.Program("bin/bridge"))
	require.Equal(t, "/opt/bridge", cfg.Program("/opt/bridge"))
}

// The config shown in docs/workers.md loads: the page cannot drift from
// what the worker reads.
func TestDocsConfigLoads(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../docs/workers.md")
	require.NoError(t, err)
	doc := string(raw)
	start := strings.Index(doc, "```toml\n")
	require.NotEqual(t, -1, start, "docs/workers.md shows a config")
	end := strings.Index(doc[start+8:], "```")
	require.NotEqual(t, -1, end)
	cfg, err := LoadConfig(writeConfig(t, doc[start+8:start+8+end]))
	require.NoError(t, err)
	require.Equal(t, "gpu0", cfg.Executors[0].Name)
	require.Equal(t, map[string]string{"CUDA_VISIBLE_DEVICES": "0"}, cfg.Executors[0].Envs)
	require.Equal(t, "llama-3-8b", cfg.Models[0].Name)
}
