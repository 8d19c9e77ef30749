package chainload

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The command name in /proc/<pid>/stat may hold spaces and parentheses;
// the CPU times are counted from its last closing parenthesis.
func TestStatCPU(t *testing.T) {
	t.Parallel()
	stat := "4242 (dev shard) (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 37 0 0 20 0 12 0 100 1 1 0"
	got, err := statCPU(stat)
	require.NoError(t, err)
	require.Equal(t, 287*10*time.Millisecond, got)

	_, err = statCPU("4242 (devshard) S 1 2")
	require.ErrorContains(t, err, "short /proc stat line")
}
