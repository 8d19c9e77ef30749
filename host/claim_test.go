package host

import (
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Every unclaimed epoch is claimed; one the chain refuses does not stop
// the others, and is tried again next round.
func TestClaimerClaimsEveryUnclaimedEpoch(t *testing.T) {
	t.Parallel()
	account := sessiontest.New(1, sessiontest.DefaultOptions()).Hosts[0].Address()
	c := &daemonChain{unclaimed: []devshardtypes.EpochPerformanceSummary{{EpochId: 3, Rewarded: 10}, {EpochId: 4, Rewarded: 20}}}
	send := &fakeSender{refuse: map[uint64]bool{3: true}}
	var logs logBuffer
	cl := newClaimer(c, send, account, slog.New(slog.NewTextHandler(&logs, nil)))
	cl.claim(t.Context())
	require.Equal(t, []uint64{3, 4}, send.claims())
	require.Contains(t, logs.String(), `msg="claim rewards" epoch=3 err="out of gas"`)
	require.Contains(t, logs.String(), `msg="claimed rewards" epoch=4 amount=20`)
	cl.claim(t.Context())
	require.Equal(t, []uint64{3, 4, 3, 4}, send.claims())
}

// Without a sender nothing is claimed or settled, and the daemon's
// rounds are safe to run.
func TestNoSenderClaimsAndSettlesNothing(t *testing.T) {
	t.Parallel()
	require.Nil(t, newClaimer(&daemonChain{}, nil, signing.Address{}, slog.Default()))
	require.Nil(t, newSelfSettler(nil, &daemonChain{}, nil, nil, slog.Default()))
	var cl *claimer
	var s *selfSettler
	cl.claim(t.Context())
	s.round(t.Context())
}

// Only the account's own key, held in memory, may send its txs.
func TestAccountKey(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	own, warm := f.Hosts[0], f.Hosts[1]
	for _, tc := range []struct {
		name    string
		key     signing.Signer
		account signing.Address
		ok      bool
	}{
		{"the account's own key", own, own.Address(), true},
		{"a warm key granted by the account", warm, own.Address(), false},
		{"a key that does not hand out its bytes", keyring{own}, own.Address(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, ok := AccountKey(tc.key, tc.account)
			require.Equal(t, tc.ok, ok)
			if ok {
				require.Same(t, own, k)
			}
		})
	}
}

// keyring signs without exposing its key, as a Cosmos keyring does.
type keyring struct{ k *signing.PrivKey }

func (r keyring) PubKey() signing.PubKey          { return r.k.PubKey() }
func (r keyring) Sign(msg []byte) ([]byte, error) { return r.k.Sign(msg) }
