package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// A member is brought up to date in as few deliveries as the host's
// limits allow: at most hostapi.MaxDiffsPerDelivery diffs, and at most
// maxRunBytes, in one POST.
func TestPostSplitsRunsAtTheHostsLimits(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		sizes []int // diffs per POST
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body hostapi.DiffRequest
		require.NoError(t, json.NewDecoder(r.Body).Decode(&body))
		n := len(body.Diffs)
		if body.Diff != nil {
			n = 1
		}
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
		_, _ = w.Write([]byte(`{"nonce":1}`))
	}))
	t.Cleanup(srv.Close)
	c := &courier{escrow: 7, peers: newPeers(sessiontest.New(1, sessiontest.DefaultOptions()).Hosts[0], sessiontest.ChainID, 10*time.Second)}
	send := func(bodies ...string) []int {
		mu.Lock()
		sizes = nil
		mu.Unlock()
		p := &post{c: c, ctx: t.Context(), m: &member{url: srv.URL, addr: signing.Address{}}, first: 1, runFrom: 1}
		for _, b := range bodies {
			require.NoError(t, p.add([]byte(b)))
		}
		_, err := p.send()
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		return sizes
	}

	small := make([]string, 2*hostapi.MaxDiffsPerDelivery+1)
	for i := range small {
		small[i] = `{"diff":"AA=="}`
	}
	require.Equal(t, []int{hostapi.MaxDiffsPerDelivery, hostapi.MaxDiffsPerDelivery, 1}, send(small...))

	big := fmt.Sprintf(`{"diff":"%s"}`, strings.Repeat("A", maxRunBytes/2))
	require.Equal(t, []int{1, 1, 1}, send(big, big, big), "two such diffs are past maxRunBytes")
	require.Equal(t, []int{2}, send(small[0], big))
}
