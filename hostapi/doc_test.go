package hostapi

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// apiSection is the HTTP API section of docs/host.md.
func apiSection(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../docs/host.md")
	require.NoError(t, err)
	doc := string(raw)
	start := strings.Index(doc, "\n## HTTP API\n")
	require.GreaterOrEqual(t, start, 0, "docs/host.md has no HTTP API section")
	section := doc[start+1:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	return section
}

// routeRow is a row of the route table: `METHOD /path?query` first.
var routeRow = regexp.MustCompile("(?m)^\\| `([A-Z]+) (/[^`?]*)(\\?[^`]*)?` \\|")

// The doc's route table and the routes the server serves and the client
// calls are the same set, with the same query parameters, so neither can
// gain or lose a route, or rename one, without the other.
func TestDocRoutesMatchCode(t *testing.T) {
	t.Parallel()
	section := apiSection(t)
	query := map[Route]string{
		GetDiffs:   "?" + ParamFrom + "=&" + ParamLimit + "=",
		Signatures: "?" + ParamNonce + "=",
	}
	documented := map[Route]string{}
	for _, m := range routeRow.FindAllStringSubmatch(section, -1) {
		r := Route{Method: m[1], Path: m[2]}
		_, twice := documented[r]
		require.False(t, twice, "docs/host.md lists %s twice", r.Pattern())
		documented[r] = m[3]
	}
	for _, r := range Routes() {
		q, ok := documented[r]
		require.True(t, ok, "route %s is not in docs/host.md's route table", r.Pattern())
		require.Equal(t, query[r], q, "query of %s in docs/host.md", r.Pattern())
		delete(documented, r)
	}
	require.Empty(t, documented, "docs/host.md documents routes hostapi does not define")
}

// The limits the doc states are the ones the code holds to.
func TestDocLimitsMatchCode(t *testing.T) {
	t.Parallel()
	section := apiSection(t)
	for _, want := range []string{
		fmt.Sprintf("Bodies are limited to %d MiB", MaxBody>>20),
		fmt.Sprintf("of at most %d", MaxDiffsPerDelivery),
		fmt.Sprintf("more than %d diffs", MaxDiffsPerDelivery),
		fmt.Sprintf("`%s` 1 to %d (%d)", ParamLimit, MaxDiffsPerPage, DefaultDiffsPerPage),
		fmt.Sprintf("at most %d MiB of a JSON answer and %d MiB of an inference stream, %d MiB a line", maxAnswer>>20, maxStreamBytes>>20, maxStreamEvent>>20),
		fmt.Sprintf(`503 {"error":%q}`, Initializing),
		fmt.Sprintf(`{"status": %q}`, Pooled),
	} {
		require.Contains(t, strings.Join(strings.Fields(section), " "), want)
	}
}
