package host

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// A member's URL is asked of the chain once and then served from the
// cache, without the trailing slash a registration may carry.
func TestChainPeersCachesURLs(t *testing.T) {
	t.Parallel()
	a := sessiontest.New(1, sessiontest.DefaultOptions()).Hosts[0].Address()
	c := &daemonChain{urls: map[signing.Address]string{a: "http://10.0.0.7:8081/"}}
	p := newChainPeers(c)
	for range 2 {
		url, err := p.PeerURL(t.Context(), a)
		require.NoError(t, err)
		require.Equal(t, "http://10.0.0.7:8081", url)
	}
	require.Equal(t, 1, c.participants)
	_, err := p.PeerURL(t.Context(), signing.Address{1})
	require.ErrorContains(t, err, "not a registered participant")
}
