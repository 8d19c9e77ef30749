package devnet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"

	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// TestProxyHost runs a proxy host (docs/workers.md, "The proxy host") as a
// real `devshard host --proxy` process against a devnet whose host0 has
// validation.proxy on: a proxy whose key host0 never granted refuses to
// start and says which grant to make; one with a granted warm key follows
// host0, and host0's slots then vote on the settled escrows while host0's
// own job queue re-runs nothing. Every request is answered and the books
// balance to the coin.
func TestProxyHost(t *testing.T) {
	const primary = 0
	e := startNetwork(t, 6*time.Minute, func(c *Config) {
		// Groups are drawn by weight: 24 slots for three equal hosts leave
		// host0 out of an escrow's group once in about 16,000 draws (12
		// slots did once in 130, too often for CI). A quarter of the
		// eligible slots re-run each inference, so host0's slots are
		// picked several times per request.
		c.Params.GroupSize = 24
		c.Params.ValidationRateBps = 2_500
		c.HostConfig = func(i int) string {
			if i != primary {
				return ""
			}
			return "[validation]\nproxy = true\n"
		}
	})
	nw := e.nw
	h0 := nw.Hosts[primary]
	acct := nw.Chain.Accounts[primary]

	t.Run("an ungranted key is refused at start", func(t *testing.T) {
		stranger, err := signing.GenerateKey(rand.Reader)
		require.NoError(t, err)
		p, err := nw.StartProxy("proxy-ungranted", h0, stranger)
		require.NoError(t, err)
		t.Cleanup(p.Stop)
		select {
		case <-p.Exited():
		case <-time.After(60 * time.Second):
			t.Fatalf("a proxy with a key %s never granted still runs after a minute; its log:\n%s", h0.Name, logTail(p.LogPath, 20))
		}
		grantee := sdk.AccAddress(stranger.Address().Bytes()).String()
		log := logTail(p.LogPath, 20)
		require.Contains(t, log, "is not granted by the primary's account "+acct.Address.String())
		require.Contains(t, log, "grant it with 'devshard chain tx authz grant "+grantee+" generic --msg-type /devshard.devshard.v1.MsgSignSession")
	})

	t.Run("a granted proxy validates for its primary", func(t *testing.T) {
		warm, err := signing.GenerateKey(rand.Reader)
		require.NoError(t, err)
		grant, err := authz.NewGrant(time.Now(), authz.NewGenericAuthorization(sdk.MsgTypeURL(&devshardtypes.MsgSignSession{})), nil)
		require.NoError(t, err)
		grantee := sdk.AccAddress(warm.Address().Bytes())
		_, err = nw.Chain.TxClient().Send(e.ctx, acct.Key, &authz.MsgGrant{Granter: acct.Address.String(), Grantee: grantee.String(), Grant: grant})
		require.NoError(t, err, "granting the proxy's warm key from %s's account", h0.Name)

		proxy, err := nw.StartProxy("proxy0", h0, warm)
		require.NoError(t, err)
		t.Cleanup(func() {
			proxy.Stop()
			if t.Failed() {
				t.Logf("%s log tail:\n%s", proxy.Name, logTail(proxy.LogPath, 30))
			}
		})
		// Ready means the proxy found its grant on chain and follows host0.
		require.NoError(t, waitHTTP(e.ctx, proxy.URL+"/readyz", 60*time.Second, func() error {
			select {
			case <-proxy.Exited():
				return fmt.Errorf("%s exited at startup; the end of %s:\n%s", proxy.Name, proxy.LogPath, logTail(proxy.LogPath, 20))
			default:
				return nil
			}
		}))

		before := e.balances()
		charged := e.send(40, 4, "proxy")
		// The proxy's votes reach the gateway through host0; let them
		// land before the gateway settles.
		require.Eventually(t, func() bool { return sample(t, proxy.URL, "devshard_host_validations_total") > 0 },
			30*time.Second, 200*time.Millisecond, "the proxy re-ran none of host0's sampled inferences")
		// A vote rides a diff only after it reached host0 and, through its
		// replies, the gateway: requests go on until the gateway counts one
		// of host0's slots' votes as carried.
		carried := fmt.Sprintf(`devshard_gateway_host_txs_carried_total{host="%s",kind="validation"}`, hex.EncodeToString(h0.Account))
		for round := 0; sample(t, e.nw.Info.Gateway.URL, carried) == 0; round++ {
			require.Less(t, round, 20, "no vote of %s's slots rode a diff, though its proxy re-ran inferences", h0.Name)
			charged += e.send(4, 4, fmt.Sprintf("proxy-carry-%d", round))
			time.Sleep(500 * time.Millisecond)
		}
		ss := e.settleAll(0)
		e.checkBooks(before, charged, ss)

		done, slots := map[string]uint64{}, 0
		for _, s := range ss {
			slots += slotsOf(s.snap, h0)
			for slot, hs := range s.msg.HostStats {
				for _, h := range nw.Hosts {
					if bytes.Equal(h.Account, s.snap.Group[slot]) {
						done[h.Name] += hs.ValidationsDone
					}
				}
			}
		}
		t.Logf("validations done by slot holder over %d settled escrows: %v", len(ss), done)
		require.Positive(t, slots, "%s held no slot in the settled escrows, so nothing could be validated for it", h0.Name)
		require.Positive(t, done[h0.Name], "%s's slots cast no vote, though its proxy re-ran inferences", h0.Name)

		// host0 re-ran nothing: its job queue made no validation job, while
		// its peers' queues did, so the counter is the one that moves.
		const enqueued = `devshard_jobs_enqueued_total{kind="validation"}`
		require.Zero(t, sample(t, h0.URL, enqueued), "%s has validation.proxy on, yet queued validations itself", h0.Name)
		require.Zero(t, sample(t, h0.URL, "devshard_host_validations_total"), "%s has validation.proxy on, yet re-ran inferences itself", h0.Name)
		for _, h := range nw.Hosts {
			if h != h0 {
				require.Positive(t, sample(t, h.URL, enqueued), "%s queued no validation, so this counter proves nothing of %s", h.Name, h0.Name)
			}
		}
	})
}

// sample reads one series of a host's /metrics: the sum of the lines that
// start with series. A counter vector with no sample yet reads 0; a metric
// the host does not export at all fails the test, so a renamed metric is
// not taken for a zero.
func sample(t *testing.T, url, series string) float64 {
	t.Helper()
	text := scrape(t, url)
	name, _, _ := strings.Cut(series, "{")
	require.Contains(t, text, "# TYPE "+name+" ", "%s exports no metric %s", url, name)
	return sumSeries(t, text, series)
}
