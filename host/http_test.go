package host

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// The server serves every route hostapi defines: none of them is unknown
// to its mux (404) or there under another method (405). Session routes
// answer 503 here, the host's storage not being ready.
func TestHandlerServesEveryRoute(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	e := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}, Metrics: NewMetrics()})
	srv := httptest.NewServer(Handler(e, "test"))
	t.Cleanup(srv.Close)
	for _, r := range hostapi.Routes() {
		req, err := http.NewRequest(r.Method, srv.URL+r.For(7), nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.NotContains(t, []int{http.StatusNotFound, http.StatusMethodNotAllowed}, resp.StatusCode, r.Pattern())
	}
}

// hostapi.Client and the server agree on every read route: the client,
// signed as a member, gets back what the host stored.
func TestClientReadsHost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	resps := b.next(t, nil)
	c := hostapi.NewClient(b.f.Hosts[1], testChainID, &http.Client{Timeout: 10 * time.Second})
	id := b.f.Snapshot.EscrowId
	host := b.hosts[0].Address()

	diffs, err := c.Diffs(t.Context(), b.urls[0], host, id, 1, hostapi.MaxDiffsPerDelivery)
	require.NoError(t, err)
	require.Len(t, diffs, 1)
	require.Equal(t, resps[0].Root, diffs[0].Root)

	sigs, err := c.Signatures(t.Context(), b.urls[0], host, id, 1)
	require.NoError(t, err)
	require.Len(t, sigs, len(resps[0].Signatures))
	require.Equal(t, uint64(1), sigs[0].Nonce)

	pooled, err := c.Mempool(t.Context(), b.urls[0], host, id)
	require.NoError(t, err)
	require.Equal(t, resps[0].Mempool, pooled)

	// Signed for host 1, the same read is refused by host 0.
	_, err = c.Mempool(t.Context(), b.urls[0], b.hosts[1].Address(), id)
	var he *hostapi.Error
	require.ErrorAs(t, err, &he)
	require.Equal(t, http.StatusForbidden, he.Status)
}

// GET /devshard/open-sessions, versiond's drain probe, counts a session
// from its first diff until its settlement phase, and answers 503 while
// the host has not recovered its sessions.
func TestOpenSessionsProbe(t *testing.T) {
	t.Parallel()
	count := func(url string) (int, hostapi.OpenSessionsResponse) {
		resp, err := http.Get(url + hostapi.OpenSessions.Path)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out hostapi.OpenSessionsResponse
		if resp.StatusCode == http.StatusOK {
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		}
		return resp.StatusCode, out
	}

	f := sessiontest.New(1, sessiontest.DefaultOptions())
	starting := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}})
	srv := httptest.NewServer(Handler(starting, "test"))
	t.Cleanup(srv.Close)
	status, _ := count(srv.URL)
	require.Equal(t, http.StatusServiceUnavailable, status, "unknown until storage is ready")

	b := setup(t)
	for _, want := range []struct {
		tx   *sessionpb.Tx
		open int
	}{
		{nil, 0},
		{startTx(1, request(1)), 1}, // ACTIVE
		{sessiontest.Finalize(), 1}, // FINALIZING
		{sessiontest.Finalize(), 0}, // SETTLEMENT
	} {
		switch {
		case want.tx == nil:
		case want.tx.GetStart() != nil:
			b.next(t, map[uint64]executor.Request{1: request(1)}, want.tx)
		default:
			b.next(t, nil, want.tx)
		}
		status, got := count(b.urls[0])
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, want.open, got.OpenSessions)
	}
}
