package node

import (
	"fmt"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// The ports FreePorts picks are distinct, free, and below the ephemeral
// range, where no outgoing connection can take one before it is bound.
// Not parallel: the package's parallel tests start nodes, whose own
// FreePorts may draw and bind a port this test has just been given and
// released, between that and its check that the port binds.
func TestFreePortsAreBelowTheEphemeralRange(t *testing.T) {
	ports, err := FreePorts(8)
	require.NoError(t, err)
	require.Len(t, ports, 8)
	seen := map[int]bool{}
	low := ephemeralLow()
	for _, p := range ports {
		require.False(t, seen[p], "port %d twice", p)
		seen[p] = true
		require.Less(t, p, low, "port %d is in the ephemeral range (from %d)", p, low)
		require.GreaterOrEqual(t, p, 10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		require.NoError(t, err, "port %d is free to bind", p)
		l.Close()
	}
}
