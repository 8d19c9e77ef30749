package keeper

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// A handler error kept in state is cut at a character boundary: a cut
// through a multi-byte character would store invalid UTF-8.
func TestTruncateKeepsUTF8(t *testing.T) {
	s := strings.Repeat("a", maxErrorLen-1) + "é and more"
	got := truncate(s, maxErrorLen)
	require.True(t, utf8.ValidString(got), "%q", got[len(got)-8:])
	require.Equal(t, strings.Repeat("a", maxErrorLen-1)+"…", got)
	require.Equal(t, "short", truncate("short", maxErrorLen))
}
