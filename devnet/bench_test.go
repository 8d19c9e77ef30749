package devnet

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The proxy baseline forwards the benchmark's requests to the model and
// back unchanged, so the load generator measures it exactly as it measures
// the gateway.
func TestProxyBaselineServesTheModel(t *testing.T) {
	t.Parallel()
	model, err := StartDirectModel()
	require.NoError(t, err)
	t.Cleanup(func() { _ = model.Close() })

	// Count what reaches the model, to know the answers came through the
	// proxy and not from somewhere else.
	var reached atomic.Int64
	counted := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		model.srv.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(counted.Close)

	proxy, err := StartProxy(counted.URL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })

	direct, err := NewClient(model.URL, "").Chat(t.Context(), benchRequest(7), false)
	require.NoError(t, err)
	via, err := NewClient(proxy.URL, "").Chat(t.Context(), benchRequest(7), false)
	require.NoError(t, err)
	require.Equal(t, direct, via, "the proxy changes nothing in the answer")

	lat, err := MeasureLatency(t.Context(), NewClient(proxy.URL, ""), 10)
	require.NoError(t, err)
	require.Len(t, lat, 10)
	require.Positive(t, lat.Quantile(0.5))
	rps, err := MeasureThroughput(t.Context(), NewClient(proxy.URL, ""), 4, 200*time.Millisecond)
	require.NoError(t, err)
	require.Positive(t, rps)
	require.Greater(t, reached.Load(), int64(11), "every request reached the model through the proxy")
}

func TestStartProxyRefusesABadTarget(t *testing.T) {
	t.Parallel()
	_, err := StartProxy("http://[::1")
	require.ErrorContains(t, err, "proxy target")
}

// A model that cannot be reached is a 502 to the client, which fails the
// measurement, rather than a line in the log.
func TestProxyAnswersBadGatewayWhenTheModelIsDown(t *testing.T) {
	t.Parallel()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	proxy, err := StartProxy(down.URL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })

	_, err = MeasureLatency(t.Context(), NewClient(proxy.URL, ""), 1)
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusBadGateway, apiErr.Status)
}
