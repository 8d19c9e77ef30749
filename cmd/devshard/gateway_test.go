package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Every gateway flag reads DEVSHARD_GATEWAY_<FLAG>; a flag on the command
// line wins, and a bad value is an error that names the variable.
func TestGatewayFlagsFromEnvironment(t *testing.T) {
	t.Setenv("DEVSHARD_GATEWAY_LISTEN", "127.0.0.1:9999")
	t.Setenv("DEVSHARD_GATEWAY_CHAIN_GRPC", "10.0.0.1:9090")
	t.Setenv("DEVSHARD_GATEWAY_ESCROW_AMOUNT", "42")
	cmd := newGatewayCommand()
	require.NoError(t, cmd.Flags().Parse([]string{"--escrow-amount", "7"}))
	require.NoError(t, applyEnv(cmd, "DEVSHARD_GATEWAY_"))
	listen, _ := cmd.Flags().GetString("listen")
	grpc, _ := cmd.Flags().GetString("chain.grpc")
	amount, _ := cmd.Flags().GetUint64("escrow-amount")
	require.Equal(t, "127.0.0.1:9999", listen)
	require.Equal(t, "10.0.0.1:9090", grpc)
	require.Equal(t, uint64(7), amount, "the command line wins over the environment")

	t.Setenv("DEVSHARD_GATEWAY_MAX_TOKENS", "lots")
	err := applyEnv(newGatewayCommand(), "DEVSHARD_GATEWAY_")
	require.ErrorContains(t, err, "DEVSHARD_GATEWAY_MAX_TOKENS")
}
