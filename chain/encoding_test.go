package chain_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chaincfg"
)

// A client's encoding is a part of the chain's: every message a client can
// sign the chain can decode, under the same type URL.
func TestClientEncodingIsPartOfTheChains(t *testing.T) {
	t.Parallel()
	client, app := chaincfg.MakeEncoding().InterfaceRegistry, chain.MakeEncoding().InterfaceRegistry
	for _, iface := range client.ListAllInterfaces() {
		require.Subset(t, app.ListImplementations(iface), client.ListImplementations(iface), iface)
	}
	require.NotEmpty(t, client.ListImplementations("cosmos.base.v1beta1.Msg"))
}
