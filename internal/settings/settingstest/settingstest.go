// Package settingstest holds the check that keeps a daemon's page in docs/
// equal to the settings the daemon declares, so the page cannot drift from
// the flags.
package settingstest

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/settings"
)

// UpdateEnv, set to any value, makes RequireDocTable rewrite the page's
// table instead of failing: DEVSHARD_UPDATE_DOCS=1 go test ./host/.
const UpdateEnv = "DEVSHARD_UPDATE_DOCS"

// RequireDocTable fails t unless the markdown page at path shows s's
// settings table (Schema.Table) exactly: the table whose header starts
// "| key |".
func RequireDocTable(t testing.TB, path string, s *settings.Schema) {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	doc := string(raw)
	start := strings.Index(doc, "\n| key |")
	require.GreaterOrEqual(t, start, 0, "%s has no settings table (a table whose header starts \"| key |\")", path)
	start++
	end := start
	for end < len(doc) && strings.HasPrefix(doc[end:], "|") {
		next := strings.IndexByte(doc[end:], '\n')
		if next < 0 {
			end = len(doc)
			break
		}
		end += next + 1
	}
	want := s.Table()
	if os.Getenv(UpdateEnv) != "" {
		require.NoError(t, os.WriteFile(path, []byte(doc[:start]+want+doc[end:]), 0o644))
		return
	}
	require.Equal(t, want, doc[start:end], "%s's settings table differs from the declarations; %s=1 rewrites it", path, UpdateEnv)
}
