package devnet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A host that exits at startup is reported with the end of its log, so a
// failed start says why without the log file (a test's is gone after it).
func TestLogTailKeepsTheLastLines(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "host.log")
	var lines []string
	for i := range 30 {
		lines = append(lines, "line "+strings.Repeat("x", i%3)+string(rune('a'+i%26)))
	}
	lines[29] = "listen tcp 127.0.0.1:40000: bind: address already in use"
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	require.Equal(t, strings.Join(lines[10:], "\n"), logTail(path, 20))
	require.Equal(t, lines[29], logTail(path, 1))
	require.Contains(t, logTail(filepath.Join(t.TempDir(), "none.log"), 5), "no such file")
}
