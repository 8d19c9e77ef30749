package settingstest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/settings"
)

// recorder notes a failure instead of ending the test.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) FailNow()              { r.failed = true; panic(r) }

func check(t *testing.T, path string, s *settings.Schema) (failed bool) {
	r := &recorder{TB: t}
	defer func() {
		if p := recover(); p != nil && p != r {
			panic(p)
		}
		failed = r.failed
	}()
	RequireDocTable(r, path, s)
	return r.failed
}

func TestDocTableMustMatch(t *testing.T) {
	var listen string
	s := settings.New("worker")
	s.String(&listen, "listen", "127.0.0.1:1", "address")
	path := filepath.Join(t.TempDir(), "worker.md")
	page := func(table string) string { return "# Worker\n\n" + table + "\nMore.\n" }

	require.NoError(t, os.WriteFile(path, []byte(page(s.Table())), 0o600))
	require.False(t, check(t, path, s))

	stale := s.Table() + "| `old` | `--old` | `DEVSHARD_WORKER_OLD` | string | none | gone |\n"
	require.NoError(t, os.WriteFile(path, []byte(page(stale)), 0o600))
	require.True(t, check(t, path, s), "a row the declarations lack fails")

	t.Setenv(UpdateEnv, "1")
	require.False(t, check(t, path, s))
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, page(s.Table()), string(raw), "the update mode rewrites the table alone")
}
