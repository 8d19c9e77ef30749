package hostapi

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// docs/jobs.md lists the worker and admin routes the code defines, no
// more and no fewer.
func TestJobsDocRoutesMatchCode(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../docs/jobs.md")
	require.NoError(t, err)
	documented := map[Route]bool{}
	for _, m := range routeRow.FindAllStringSubmatch(string(raw), -1) {
		documented[Route{Method: m[1], Path: m[2]}] = true
	}
	for _, r := range append(WorkerRoutes(), AdminRoutes()...) {
		require.True(t, documented[r], "route %s is not in docs/jobs.md", r.Pattern())
		delete(documented, r)
	}
	require.Empty(t, documented, "docs/jobs.md documents routes hostapi does not define")
}
